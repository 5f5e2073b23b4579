// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortUnlearning
/// @notice Right-to-be-forgotten workflow: Requested -> Executed -> Verified, where a
///         verifier's rejection sends an execution back to Requested (the request stays open
///         and can be executed again). Execution marks the dataset forgotten and claws back
///         the rewards it earned from its owner into the treasury.
///
///         Methods are small integers governance can add to (`addUnlearningMethod`); the
///         constructor installs cohort's: 1 retrain and 2 shards (exact), 3 fed-eraser,
///         4 lora-ga and 5 lora-npo (approximate).
abstract contract CohortUnlearning is CohortBase {
    /// @notice Makes `method` (1-255) known, `exact` if it removes the data's influence
    ///         exactly. Governance only; a known method keeps its number for good.
    function addUnlearningMethod(uint8 method, bool exact) external onlyGovernance {
        if (method == 0 || _methods & (1 << method) != 0) revert InvalidMethod(method);
        _addMethod(method, exact);
    }

    /// @notice Whether `method` is known and whether it is exact.
    function unlearningMethod(uint8 method) external view returns (bool known, bool exact) {
        return (_methods & (1 << method) != 0, _exactMethods & (1 << method) != 0);
    }

    /// @notice Asks for `datasetId` to be unlearned. The dataset's owner or governance, for a
    ///         dataset that is not forgotten and has no request open. `forgetSetHash`
    ///         commits to the forget set the requester will disclose to the verifier.
    ///         Returns the request id (from 1).
    function requestUnlearning(bytes32 datasetId, bytes32 reasonHash, bytes32 forgetSetHash)
        external
        returns (uint64 requestId)
    {
        Dataset storage d = _datasets[datasetId];
        address owner = d.owner;
        if (owner == address(0)) revert UnknownDataset(datasetId);
        if (msg.sender != owner && msg.sender != governance) revert NotAuthorized(msg.sender);
        if (d.forgotten) revert DatasetIsForgotten(datasetId);
        uint64 open = _openRequest[datasetId];
        if (open != 0) revert UnlearningPending(datasetId, open);
        requestId = ++_requestCount;
        _openRequest[datasetId] = requestId;
        UnlearningRequest storage q = _requests[requestId];
        q.datasetId = datasetId;
        q.requester = msg.sender;
        q.requestedAt = uint64(block.timestamp);
        q.phase = UnlearningPhase.Requested;
        q.reasonHash = reasonHash;
        q.forgetSetHash = forgetSetHash;
        emit UnlearningRequested(requestId, datasetId, msg.sender, reasonHash, forgetSetHash);
    }

    /// @notice Records that unlearning was executed by a known `method`, producing
    ///         `resultModelHash`, with the executor's evidence blob `evidenceHash` (its metrics
    ///         and model hashes). Requested -> Executed. Any participant with
    ///         ROLE_COORDINATOR. Marks the dataset forgotten and claws back rewardsByDataset -
    ///         clawedBackByDataset from the owner's balance, then its active stake, then its
    ///         unbonding stake, into the treasury (as much as is there; Clawback is always
    ///         emitted, maybe with 0, and nothing is taken twice when a rejected execution is
    ///         executed again).
    function recordUnlearning(uint64 requestId, uint8 method, bytes32 resultModelHash, bytes32 evidenceHash)
        external
    {
        _requireRole(msg.sender, ROLE_COORDINATOR);
        if (_methods & (1 << method) == 0) revert InvalidMethod(method);
        UnlearningRequest storage q = _request(requestId, UnlearningPhase.Requested);
        bytes32 id = q.datasetId;
        // A dataset a run's governance admitted is forgotten once that run approved it.
        address run = _datasetRun[id];
        if (run != address(0) && !_unlearningApproved[requestId]) revert UnlearningNotApproved(requestId, run);
        Dataset storage d = _datasets[id];
        d.forgotten = true;
        q.phase = UnlearningPhase.Executed;
        q.method = method;
        q.resultModelHash = resultModelHash;
        q.evidenceHash = evidenceHash;
        q.executor = msg.sender;
        q.executedAt = uint64(block.timestamp);
        emit UnlearningExecuted(requestId, id, resultModelHash, method, msg.sender, evidenceHash);

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
        q.clawedBack += taken;
        emit Clawback(requestId, owner, taken);
    }

    /// @notice A verifier's verdict on an execution: a validator other than the executor
    ///         that recomputed the evidence from the blobs, the test set and the disclosed
    ///         forget set. Accepted: its evidence must be the executor's (`evidenceHash`
    ///         equal, EvidenceMismatch otherwise), Executed -> Verified, the metrics kept.
    ///         Rejected (`reasonHash` says why): Executed -> Requested, the request open again
    ///         for another execution; the dataset stays forgotten.
    function verifyUnlearning(
        uint64 requestId,
        bool accepted,
        bytes32 evidenceHash,
        UnlearningEvidence calldata evidence,
        bytes32 reasonHash
    ) external {
        _requireRole(msg.sender, ROLE_VALIDATOR);
        UnlearningRequest storage q = _request(requestId, UnlearningPhase.Executed);
        if (msg.sender == q.executor) revert VerifierIsExecutor(requestId, msg.sender);
        if (!accepted) {
            q.phase = UnlearningPhase.Requested;
            q.rejections += 1;
            emit UnlearningRejected(requestId, evidenceHash, reasonHash, msg.sender);
            return;
        }
        if (evidenceHash != q.evidenceHash) revert EvidenceMismatch(requestId, q.evidenceHash, evidenceHash);
        q.phase = UnlearningPhase.Verified;
        q.verifier = msg.sender;
        q.verifiedAt = uint64(block.timestamp);
        q.evidence = evidence;
        delete _openRequest[q.datasetId];
        emit UnlearningVerified(requestId, evidenceHash, evidence, msg.sender);
    }

    /// @notice Records that the forgotten client's blobs were deleted from the blob store
    ///         after a verified unlearning (`manifestHash`: the list of their hashes). The
    ///         request's executor or governance, once.
    function recordBlobDeletion(uint64 requestId, bytes32 manifestHash) external {
        UnlearningRequest storage q = _request(requestId, UnlearningPhase.Verified);
        if (msg.sender != q.executor && msg.sender != governance) revert NotAuthorized(msg.sender);
        if (q.deletedBlobs != bytes32(0)) revert BlobsAlreadyDeleted(requestId);
        if (manifestHash == bytes32(0)) revert ZeroCommitment();
        q.deletedBlobs = manifestHash;
        emit UnlearningBlobsDeleted(requestId, manifestHash, msg.sender);
    }

    /// @notice Full record of an unlearning request (all zero when unknown).
    function unlearningRequest(uint64 requestId) external view returns (UnlearningRequest memory) {
        return _requests[requestId];
    }

    /// @notice Number of unlearning requests so far (ids are 1..=count).
    function unlearningRequestCount() external view returns (uint64) {
        return _requestCount;
    }

    function _addMethod(uint8 method, bool exact) internal {
        _methods |= 1 << method;
        if (exact) _exactMethods |= 1 << method;
        emit UnlearningMethodAdded(method, exact);
    }

    function _request(uint64 requestId, UnlearningPhase want) internal view returns (UnlearningRequest storage q) {
        q = _requests[requestId];
        UnlearningPhase have = q.phase;
        if (have == UnlearningPhase.None) revert UnknownRequest(requestId);
        if (have != want) revert WrongRequestPhase(requestId, uint8(have), uint8(want));
    }
}
