// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortUnlearning
/// @notice Right-to-be-forgotten workflow: Requested -> Executed -> Verified.
///         Execution marks the dataset forgotten and claws back the rewards it
///         earned from its owner into the treasury.
abstract contract CohortUnlearning is CohortBase {
    /// @notice Asks for `datasetId` to be unlearned. The dataset's owner or
    ///         governance. Returns the request id (from 1).
    function requestUnlearning(bytes32 datasetId, bytes32 reasonHash) external returns (uint64 requestId) {
        address owner = _datasets[datasetId].owner;
        if (owner == address(0)) revert UnknownDataset(datasetId);
        if (msg.sender != owner && msg.sender != governance) revert NotAuthorized(msg.sender);
        requestId = ++_requestCount;
        UnlearningRequest storage q = _requests[requestId];
        q.datasetId = datasetId;
        q.requester = msg.sender;
        q.requestedAt = uint64(block.timestamp);
        q.phase = UnlearningPhase.Requested;
        q.reasonHash = reasonHash;
        emit UnlearningRequested(requestId, datasetId, msg.sender, reasonHash);
    }

    /// @notice Records that unlearning was executed, producing
    ///         `resultModelHash` by `method` (0 exact re-aggregation, 1 exact
    ///         retrain, 2 approximate). Requested -> Executed. Any participant
    ///         with ROLE_COORDINATOR. Marks the dataset forgotten and claws back
    ///         rewardsByDataset - clawedBackByDataset from the owner's balance,
    ///         then its active stake, then its unbonding stake, into the treasury
    ///         (as much as is there; Clawback is always emitted, maybe with 0).
    function recordUnlearning(uint64 requestId, bytes32 resultModelHash, uint8 method) external {
        _requireRole(msg.sender, ROLE_COORDINATOR);
        if (method > 2) revert InvalidMethod(method);
        UnlearningRequest storage q = _request(requestId, UnlearningPhase.Requested);
        bytes32 id = q.datasetId;
        Dataset storage d = _datasets[id];
        d.forgotten = true;
        q.phase = UnlearningPhase.Executed;
        q.method = method;
        q.resultModelHash = resultModelHash;
        q.executor = msg.sender;
        q.executedAt = uint64(block.timestamp);
        emit UnlearningExecuted(requestId, id, resultModelHash, method, msg.sender);

        address owner = d.owner;
        uint256 owed = rewardsByDataset[id] - clawedBackByDataset[id];
        uint256 taken;
        if (owed != 0) {
            uint256 bal = _balances[owner];
            uint256 fromBalance = owed < bal ? owed : bal;
            if (fromBalance != 0) {
                _debitBalance(owner, fromBalance);
                _treasury += fromBalance;
            }
            taken = fromBalance + _takeStakeToTreasury(owner, owed - fromBalance);
            clawedBackByDataset[id] += taken;
        }
        q.clawedBack = taken;
        emit Clawback(requestId, owner, taken);
    }

    /// @notice Attaches verification evidence (e.g. a membership-inference
    ///         audit) to an executed request: Executed -> Verified. Metrics are
    ///         SCORE_SCALE fixed-point. Any participant with ROLE_COORDINATOR or
    ///         ROLE_VALIDATOR.
    function recordUnlearningEvidence(
        uint64 requestId,
        bytes32 evidenceHash,
        int64 forgetAccuracy,
        int64 membershipAdvantage
    ) external {
        _requireRole(msg.sender, ROLE_COORDINATOR | ROLE_VALIDATOR);
        UnlearningRequest storage q = _request(requestId, UnlearningPhase.Executed);
        q.phase = UnlearningPhase.Verified;
        q.evidenceHash = evidenceHash;
        q.verifier = msg.sender;
        q.verifiedAt = uint64(block.timestamp);
        q.forgetAccuracy = forgetAccuracy;
        q.membershipAdvantage = membershipAdvantage;
        emit UnlearningVerified(requestId, evidenceHash, forgetAccuracy, membershipAdvantage, msg.sender);
    }

    /// @notice Full record of an unlearning request (all zero when unknown).
    function unlearningRequest(uint64 requestId) external view returns (UnlearningRequest memory) {
        return _requests[requestId];
    }

    /// @notice Number of unlearning requests so far (ids are 1..=count).
    function unlearningRequestCount() external view returns (uint64) {
        return _requestCount;
    }

    function _request(uint64 requestId, UnlearningPhase want) internal view returns (UnlearningRequest storage q) {
        q = _requests[requestId];
        UnlearningPhase have = q.phase;
        if (have == UnlearningPhase.None) revert UnknownRequest(requestId);
        if (have != want) revert WrongRequestPhase(requestId, uint8(have), uint8(want));
    }
}
