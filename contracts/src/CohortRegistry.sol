// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortRegistry
/// @notice Participants register themselves once with a roles bitmask and the
///         hash of their ed25519 public key.
abstract contract CohortRegistry is CohortBase {
    /// @notice Allows `who` to register with ROLE_COORDINATOR. Governance only.
    function approveCoordinator(address who) external onlyGovernance {
        if (who == address(0)) revert ZeroAddress();
        coordinatorApproved[who] = true;
        emit CoordinatorApproved(who);
    }

    /// @notice Registers the caller with `roles` (bitmask of ROLE_*) bound to
    ///         `keyHash` (hash of its ed25519 public key). Anyone, once.
    ///         ROLE_COORDINATOR requires prior approveCoordinator(caller).
    function register(uint8 roles, bytes32 keyHash) external {
        if (roles == 0 || roles & ~ALL_ROLES != 0) revert InvalidRoles(roles);
        if (keyHash == bytes32(0)) revert ZeroKeyHash();
        Participant storage p = _participants[msg.sender];
        if (p.roles != 0) revert AlreadyRegistered(msg.sender);
        if (roles & ROLE_COORDINATOR != 0 && !coordinatorApproved[msg.sender]) {
            revert CoordinatorNotApproved(msg.sender);
        }
        p.roles = roles;
        p.registeredAt = uint64(block.timestamp);
        p.keyHash = keyHash;
        emit Registered(msg.sender, roles, keyHash);
    }

    /// @notice Registration record of `who` (all zero when unregistered).
    function participant(address who) external view returns (uint8 roles, bytes32 keyHash, uint64 registeredAt) {
        Participant storage p = _participants[who];
        return (p.roles, p.keyHash, p.registeredAt);
    }
}
