// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortGovernance
/// @notice Governance hand-over and protocol parameters.
abstract contract CohortGovernance is CohortBase {
    /// @notice Hands governance to `next`. Governance only.
    function setGovernance(address next) external onlyGovernance {
        if (next == address(0)) revert ZeroAddress();
        emit GovernanceChanged(governance, next);
        governance = next;
    }

    /// @notice Replaces the protocol parameters. Governance only. Rounds already
    ///         open keep the snapshot taken when they were opened.
    /// @dev Reverts InvalidParam(field) with `field` the 0-based index of the
    ///      offending member of Params: bps fields (4, 5, 6) must be <= 10_000,
    ///      consensusTolerance (7) >= 0, maxUpdatesPerRound (9) >= 1,
    ///      maxValidatorsPerRound (10) in 1..=MAX_VALIDATORS_CAP, rewardPerScore (11) <= MAX_SUPPLY.
    function setParams(Params calldata p) external onlyGovernance {
        _validateParams(p);
        _params = p;
        emit ParamsUpdated(p);
    }

    /// @notice The parameters in force for rounds opened from now on.
    function params() external view returns (Params memory) {
        return _params;
    }

    function _validateParams(Params memory p) internal pure {
        if (p.slashRejectBps > BPS) revert InvalidParam(4);
        if (p.slashNoRevealBps > BPS) revert InvalidParam(5);
        if (p.validatorRewardBps > BPS) revert InvalidParam(6);
        if (p.consensusTolerance < 0) revert InvalidParam(7);
        if (p.maxUpdatesPerRound == 0) revert InvalidParam(9);
        if (p.maxValidatorsPerRound == 0 || p.maxValidatorsPerRound > MAX_VALIDATORS_CAP) revert InvalidParam(10);
        if (p.rewardPerScore > MAX_SUPPLY) revert InvalidParam(11);
    }
}
