// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortAnchor
/// @notice Anchors the (size, root) of an external append-only log on chain.
abstract contract CohortAnchor is CohortBase {
    /// @notice Records `root` for a log of `size` entries; size must strictly
    ///         grow. Governance or a participant with ROLE_COORDINATOR.
    function anchor(uint64 size, bytes32 root) external {
        if (msg.sender != governance && !_hasRole(msg.sender, ROLE_COORDINATOR)) revert NotAuthorized(msg.sender);
        uint64 latest = _anchorSize;
        if (size <= latest) revert AnchorNotGrowing(latest, size);
        _anchorSize = size;
        _anchorRoot = root;
        _anchorAt = uint64(block.timestamp);
        emit Anchored(size, root, msg.sender);
    }

    /// @notice Latest anchor (all zero before the first one).
    function latestAnchor() external view returns (uint64 size, bytes32 root, uint64 anchoredAt) {
        return (_anchorSize, _anchorRoot, _anchorAt);
    }
}
