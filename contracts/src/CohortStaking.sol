// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortStaking
/// @notice Stake is moved from the balance, unbonds for `params.unbondingPeriod`
///         seconds, then can be withdrawn. Slashing only happens through round
///         settlement and unlearning clawback (active stake first, then unbonding).
abstract contract CohortStaking is CohortBase {
    /// @notice Moves `amount` from the caller's balance to its active stake.
    ///         Registered participants only.
    function stake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (_participants[msg.sender].roles == 0) revert NotRegistered(msg.sender);
        _debitBalance(msg.sender, amount);
        _stakes[msg.sender].active += amount;
        _totalStaked += amount;
        emit Staked(msg.sender, amount);
    }

    /// @notice Moves `amount` of the caller's active stake to unbonding and
    ///         (re)sets the unlock time of the WHOLE unbonding amount to
    ///         now + params.unbondingPeriod. Anyone with active stake.
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        StakeInfo storage s = _stakes[msg.sender];
        uint256 active = s.active;
        if (active < amount) revert InsufficientStake(msg.sender, active, amount);
        s.active = active - amount;
        s.unbonding += amount;
        uint64 unlockAt = uint64(block.timestamp) + _params.unbondingPeriod;
        s.unlockAt = unlockAt;
        emit UnstakeRequested(msg.sender, amount, unlockAt);
    }

    /// @notice Moves all of the caller's unbonding stake back to its balance
    ///         once block.timestamp >= unlockAt.
    function withdraw() external {
        StakeInfo storage s = _stakes[msg.sender];
        uint256 amount = s.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < s.unlockAt) revert StillUnbonding(msg.sender, s.unlockAt, uint64(block.timestamp));
        s.unbonding = 0;
        s.unlockAt = 0;
        _totalStaked -= amount;
        _creditBalance(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// @notice Stake of `who`.
    function stakeOf(address who) external view returns (uint256 active, uint256 unbonding, uint64 unlockAt) {
        StakeInfo storage s = _stakes[who];
        return (s.active, s.unbonding, s.unlockAt);
    }
}
