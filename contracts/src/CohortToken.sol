// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortToken
/// @notice The internal protocol token: balances, mint, transfer, treasury and
///         the O(1) supply breakdown behind the conservation invariant
///         minted == balances + staked + escrowed + pools + treasury + burned.
abstract contract CohortToken is CohortBase {
    /// @notice Mints `amount` new base units to `to`. Governance only.
    function mint(address to, uint256 amount) external onlyGovernance {
        if (to == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        uint256 minted = _totalMinted;
        if (amount > MAX_SUPPLY - minted) revert SupplyCapExceeded(minted, amount, MAX_SUPPLY);
        _totalMinted = minted + amount;
        _creditBalance(to, amount);
        emit Minted(to, amount);
    }

    /// @notice Moves `amount` of the caller's balance to `to`. Anyone.
    function transfer(address to, uint256 amount) external {
        if (to == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        _debitBalance(msg.sender, amount);
        _creditBalance(to, amount);
        emit Transfer(msg.sender, to, amount);
    }

    /// @notice Moves `amount` of the caller's balance into the treasury. Anyone.
    function fundTreasury(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        _debitBalance(msg.sender, amount);
        _treasury += amount;
        emit TreasuryFunded(msg.sender, amount);
    }

    /// @notice Burns `amount` from the treasury (counted in `burned`). Governance only.
    function burnTreasury(uint256 amount) external onlyGovernance {
        if (amount == 0) revert ZeroAmount();
        uint256 have = _treasury;
        if (have < amount) revert InsufficientTreasury(have, amount);
        _treasury = have - amount;
        _totalBurned += amount;
        emit TreasuryBurned(msg.sender, amount);
    }

    /// @notice Spendable (unstaked, unescrowed) balance of `who`.
    function balanceOf(address who) external view returns (uint256) {
        return _balances[who];
    }

    /// @notice Treasury balance.
    function treasury() external view returns (uint256) {
        return _treasury;
    }

    /// @notice Running totals; invariant:
    ///         minted == balances + staked + escrowed + pools + treasury + burned.
    function supplyBreakdown()
        external
        view
        returns (
            uint256 minted,
            uint256 balances,
            uint256 staked,
            uint256 escrowed,
            uint256 pools,
            uint256 treasury_,
            uint256 burned
        )
    {
        return (_totalMinted, _totalBalances, _totalStaked, _totalEscrowed, _totalPools, _treasury, _totalBurned);
    }
}
