// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";
import {CohortRuns} from "./CohortRuns.sol";

/// @title CohortStages
/// @notice Stage servers of model-parallel training: participants holding some transformer
///         layers of a model answer forward calls for clients, who pay them per token through an
///         escrow; verifiers holding the same layers recompute sampled rows, and a quorum of
///         them attesting the same mismatch slashes the server.
///
///         The contract can neither recompute a layer nor check an ed25519 signature, so it
///         decides on attestations: `stageQuorum` distinct verifiers — each itself an active,
///         staked stage server of the same model and layers, not the accused — attesting the
///         same claim (server, call digest, committed row digest, recomputed row digest, the two
///         digests different) slash `stageSlashBps` of the server's stake, pay
///         `stageAttesterBps` of that to the claim's attesters in equal shares (the rest and the
///         rounding dust to the treasury) and mark the server inactive for good.
///
///         Pay is escrowed per (server, period): it is released to the server only once
///         `stageChallengeWindow` seconds have passed since the period's last payment and only
///         while the server is not slashed. A slashed server's unreleased escrows, every
///         period's, go back to their payers (`refundStage`, pulled per payer so that no number
///         of payers can make a slash too costly to execute).
///
/// @dev Deployed by `Cohort`'s constructor and run only by `delegatecall` from `Cohort`'s
///      fallback, in `Cohort`'s storage: `Cohort` does not fit EIP-170's 24,576 bytes with this
///      module inherited. It inherits CohortBase alone, so its storage layout is `Cohort`'s
///      (build.js checks that the two layouts are identical). Called directly, at its own
///      address, it has an empty state and no governance, and can change nothing that matters.
contract CohortStages is CohortBase {
    /// @notice The code of per-run governance and the data market (`CohortRuns`, deployed by
    ///         the constructor): a selector that is none of Cohort's nor CohortStages' runs
    ///         there, still in Cohort's storage.
    address public immutable runs;

    constructor() {
        runs = address(new CohortRuns());
    }

    /// @notice Runs CohortRuns' code for any other selector, in the caller's storage (Cohort's),
    ///         with the same msg.sender; its return or revert data is this call's.
    fallback() external {
        address target = runs;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, 0, calldatasize())
            let ok := delegatecall(gas(), target, ptr, calldatasize(), 0, 0)
            returndatacopy(ptr, 0, returndatasize())
            if iszero(ok) { revert(ptr, returndatasize()) }
            return(ptr, returndatasize())
        }
    }

    /// @notice Replaces the stage parameters. Governance only. Reverts
    ///         InvalidStageParam(field), field = the 0-based index in StageParams:
    ///         minStageStake (0) > 0; stageChallengeWindow (1) in 1..=params.unbondingPeriod (a
    ///         server unstaking after its last payment stays slashable through the window);
    ///         stageQuorum (2) in 2..=MAX_STAGE_QUORUM; the bps fields (3, 4) <= 10_000.
    function setStageParams(StageParams calldata p) external onlyGovernance {
        _setStageParams(p);
    }

    /// @notice The stage parameters in force.
    function stageParams() external view returns (StageParams memory) {
        return _stageParams;
    }

    /// @notice Declares the caller a stage server of `modelHash` (the SHA-256 of the model's
    ///         files) holding layers `firstLayer..endLayer` (end exclusive). A registered
    ///         participant with active stake >= minStageStake, once per address.
    function registerStage(bytes32 modelHash, uint32 firstLayer, uint32 endLayer) external {
        if (modelHash == bytes32(0)) revert ZeroCommitment();
        if (firstLayer >= endLayer) revert InvalidLayers(firstLayer, endLayer);
        if (_participants[msg.sender].roles == 0) revert NotRegistered(msg.sender);
        StageServer storage s = _stageServers[msg.sender];
        if (s.modelHash != bytes32(0)) revert StageExists(msg.sender);
        _requireStageStake(msg.sender);
        s.modelHash = modelHash;
        s.firstLayer = firstLayer;
        s.endLayer = endLayer;
        s.registeredAt = uint64(block.timestamp);
        emit StageRegistered(msg.sender, modelHash, firstLayer, endLayer);
    }

    /// @notice A stage server's record (all zero when unknown).
    function stageServer(address server) external view returns (StageServer memory) {
        return _stageServers[server];
    }

    /// @notice Whether `server` is a stage server that was never slashed.
    function stageActive(address server) external view returns (bool) {
        StageServer storage s = _stageServers[server];
        return s.modelHash != bytes32(0) && s.slashClaim == bytes32(0);
    }

    /// @notice Escrows `amount` of the caller's balance as pay to `server` for `period` (a
    ///         number the parties agree on: a session, an epoch), for `tokens` model tokens.
    ///         Anyone with the balance, to an active stage server whose active stake is
    ///         >= minStageStake, while the period's escrow is not released. Sets the period's
    ///         release time to now + stageChallengeWindow (never earlier than it was).
    function payStage(address server, uint64 period, uint64 tokens, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        _activeStage(server);
        _requireStageStake(server);
        StageEscrow storage e = _stageEscrows[server][period];
        if (e.released) revert EscrowReleased(server, period);
        _debitBalance(msg.sender, amount);
        _totalEscrowed += amount;
        e.amount += amount;
        e.tokens += tokens;
        uint64 releaseAt = uint64(block.timestamp) + _stageParams.stageChallengeWindow;
        if (releaseAt > e.releaseAt) e.releaseAt = releaseAt;
        _stagePaid[server][period][msg.sender] += amount;
        emit StagePaid(server, period, msg.sender, tokens, amount);
    }

    /// @notice Pays `period`'s escrow to `server`. Anyone, once block.timestamp >= the
    ///         period's release time, while the server is not slashed.
    function releaseStage(address server, uint64 period) external {
        _activeStage(server);
        StageEscrow storage e = _stageEscrows[server][period];
        if (e.released) revert EscrowReleased(server, period);
        uint256 amount = e.amount;
        if (amount == 0) revert NothingEscrowed(server, period, address(0));
        if (block.timestamp < e.releaseAt) {
            revert EscrowLocked(server, period, e.releaseAt, uint64(block.timestamp));
        }
        e.released = true;
        _totalEscrowed -= amount;
        _creditBalance(server, amount);
        emit StageReleased(server, period, amount, e.tokens);
    }

    /// @notice Gives `payer` back what it paid a slashed `server` for `period`, if that
    ///         period's escrow was not released. Anyone (the tokens go to the payer).
    function refundStage(address server, uint64 period, address payer) external {
        StageServer storage s = _stageServers[server];
        if (s.modelHash == bytes32(0)) revert UnknownStage(server);
        if (s.slashClaim == bytes32(0)) revert StageNotSlashed(server);
        StageEscrow storage e = _stageEscrows[server][period];
        if (e.released) revert EscrowReleased(server, period);
        mapping(address => uint256) storage paid = _stagePaid[server][period];
        uint256 amount = paid[payer];
        if (amount == 0) revert NothingEscrowed(server, period, payer);
        paid[payer] = 0;
        e.amount -= amount;
        _totalEscrowed -= amount;
        _creditBalance(payer, amount);
        emit StageRefunded(server, period, payer, amount);
    }

    /// @notice A period's escrow for `server`.
    function stageEscrow(address server, uint64 period) external view returns (StageEscrow memory) {
        return _stageEscrows[server][period];
    }

    /// @notice What `payer` has held in `server`'s escrow for `period` (0 once refunded; kept
    ///         after a release).
    function stagePaid(address server, uint64 period, address payer) external view returns (uint256) {
        return _stagePaid[server][period][payer];
    }

    /// @notice The caller, a verifier, attests that `server` committed `committedRow` for a row
    ///         of the call `callDigest` whose recomputation gives `recomputedRow` (`period`: the
    ///         period the call was paid under, as the verifier knows it; recorded in the event).
    ///         The caller must be an active stage server of the same model and layers as
    ///         `server`, with active stake >= minStageStake, not `server` itself, and may attest
    ///         a claim once. Returns the claim's attestations so far; the one that reaches
    ///         stageQuorum slashes the server (see the contract's notice).
    ///         claimId = keccak256(abi.encode(server, callDigest, committedRow, recomputedRow)).
    function attestStageFraud(
        address server,
        uint64 period,
        bytes32 callDigest,
        bytes32 committedRow,
        bytes32 recomputedRow
    ) external returns (uint256 count) {
        if (committedRow == recomputedRow) revert NotAMismatch();
        if (callDigest == bytes32(0)) revert ZeroCommitment();
        StageServer storage s = _activeStage(server);
        if (msg.sender == server) revert SelfAttestation(server);
        StageServer storage v = _stageServers[msg.sender];
        if (
            v.modelHash != s.modelHash || v.firstLayer != s.firstLayer || v.endLayer != s.endLayer
                || v.slashClaim != bytes32(0)
        ) revert NotAStageVerifier(msg.sender, server);
        _requireStageStake(msg.sender);
        bytes32 claimId = keccak256(abi.encode(server, callDigest, committedRow, recomputedRow));
        address[] storage attesters = _stageClaims[claimId];
        count = attesters.length;
        for (uint256 i; i < count; ++i) {
            if (attesters[i] == msg.sender) revert AlreadyAttested(claimId, msg.sender);
        }
        attesters.push(msg.sender);
        ++count;
        emit StageFraudAttested(server, claimId, msg.sender, period, callDigest, committedRow, recomputedRow, count);
        if (count >= _stageParams.stageQuorum) _slashStage(server, s, claimId, attesters);
    }

    /// @notice The attesters of a claim, in order (empty when none).
    function stageClaim(bytes32 claimId) external view returns (address[] memory) {
        return _stageClaims[claimId];
    }

    function _slashStage(address server, StageServer storage s, bytes32 claimId, address[] storage attesters)
        internal
    {
        s.slashClaim = claimId;
        s.slashedAt = uint64(block.timestamp);
        StakeInfo storage st = _stakes[server];
        StageParams storage sp = _stageParams;
        uint256 taken = _takeStakeToTreasury(server, _mulDiv(st.active + st.unbonding, sp.stageSlashBps, BPS));
        uint256 n = attesters.length;
        uint256 share = _mulDiv(taken, sp.stageAttesterBps, BPS) / n;
        if (share != 0) {
            _treasury -= share * n;
            for (uint256 i; i < n; ++i) {
                address a = attesters[i];
                _creditBalance(a, share);
                emit StageAttesterRewarded(server, a, share);
            }
        }
        emit StageSlashed(server, claimId, taken, share * n);
    }

    function _setStageParams(StageParams memory p) internal {
        if (p.minStageStake == 0) revert InvalidStageParam(0);
        if (p.stageChallengeWindow == 0 || p.stageChallengeWindow > _params.unbondingPeriod) {
            revert InvalidStageParam(1);
        }
        if (p.stageQuorum < 2 || p.stageQuorum > MAX_STAGE_QUORUM) revert InvalidStageParam(2);
        if (p.stageSlashBps > BPS) revert InvalidStageParam(3);
        if (p.stageAttesterBps > BPS) revert InvalidStageParam(4);
        _stageParams = p;
        emit StageParamsUpdated(p);
    }

    /// @dev The record of a stage server that exists and is not slashed.
    function _activeStage(address server) internal view returns (StageServer storage s) {
        s = _stageServers[server];
        if (s.modelHash == bytes32(0)) revert UnknownStage(server);
        if (s.slashClaim != bytes32(0)) revert StageInactive(server);
    }

    function _requireStageStake(address who) internal view {
        uint256 have = _stakes[who].active;
        uint256 need = _stageParams.minStageStake;
        if (have < need) revert InsufficientStake(who, have, need);
    }
}
