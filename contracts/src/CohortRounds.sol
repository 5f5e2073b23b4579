// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortRounds
/// @notice Federated-learning rounds driven by their coordinator:
///         Submit -> Commit -> Reveal -> (tally batches) Tallied -> Finalized
///         -> (settle batches) Settled.
/// @dev Tally and settlement are batched (`maxUpdates` / `maxItems`) so that a
///      round with 256 updates and 32 validators needs only a few transactions,
///      each well under a 2^24 gas cap.
abstract contract CohortRounds is CohortBase {
    /// @dev Scratch state of one tally batch (kept in memory to stay readable
    ///      and clear of stack limits).
    struct TallyScratch {
        uint32[] vIdx; // indices (commit order) of the revealed validators
        uint256[] weights; // their weights
        uint256[] dataSlots; // storage slot of element 0 of each one's `scores`
        uint256 totalWeight; // sum of revealed weights
        uint32[] agree; // agreements found in this batch, per revealed validator
        uint256[] keys; // per-update sort keys, see _scoreKey
        int64 threshold;
        int256 tolerance;
        bytes32 acceptedSetHash;
        uint32 acceptedCount;
        uint256 sumAcceptedScores;
    }

    /// @dev Flips the sign bit so that int64 order becomes uint64 order.
    uint256 private constant SIGN_FLIP = 1 << 63;

    // ------------------------------------------------------------------
    // Lifecycle
    // ------------------------------------------------------------------

    /// @notice Appends `clients` to the caller's roster: the clients its rounds
    ///         sample their cohorts from, a client's roster index being its
    ///         position (0 first). ROLE_COORDINATOR; only before the caller opens
    ///         its first round (the roster is fixed from then on); the clients
    ///         need not be registered yet. Each address chains into the caller's
    ///         beacon: beacon = keccak256(abi.encode(beacon, client)), so the
    ///         first cohort's seed is fixed by the roster.
    function extendRoster(address[] calldata clients) external {
        _requireRole(msg.sender, ROLE_COORDINATOR);
        uint256 count = clients.length;
        if (count == 0) revert EmptyBatch();
        if (_rosterFixed[msg.sender]) revert RosterFixed(msg.sender);
        uint32 n = _rosterSize[msg.sender];
        if (count > MAX_ROSTER - n) revert RosterFull(MAX_ROSTER);
        mapping(address => uint32) storage index = _rosterIndexPlusOne[msg.sender];
        bytes32 beacon = _beacon[msg.sender];
        // A run with governance takes the clients its members admitted only.
        bool governed = _govParams[msg.sender].votingPeriod != 0;
        for (uint256 i; i < count; ++i) {
            address c = clients[i];
            if (c == address(0)) revert ZeroAddress();
            if (governed && !_govAdmittedClient[msg.sender][c]) revert NotAdmitted(msg.sender, bytes32(uint256(uint160(c))));
            if (index[c] != 0) revert AlreadyInRoster(c);
            index[c] = ++n;
            beacon = keccak256(abi.encode(beacon, c));
        }
        _rosterSize[msg.sender] = n;
        _beacon[msg.sender] = beacon;
        emit RosterExtended(msg.sender, n, beacon);
    }

    /// @notice Opens a round on `globalModelHash` with `rewardPool` escrowed from
    ///         the caller's balance, or from the treasury when `fromTreasury`,
    ///         for a cohort of `cohortSize` clients of the caller's roster (all
    ///         of it when larger) sampled from the caller's beacon: only they may
    ///         submit. Any participant with ROLE_COORDINATOR and a roster
    ///         (coordinators are governance-approved, so they may also draw on
    ///         the treasury). The round snapshots the current params. The beacon
    ///         moves on only when a round's reveals close (see `tally`), from
    ///         the validators' secret salts, so the coordinator cannot choose
    ///         the cohort: a round it abandons is followed by the same cohort.
    function openRound(bytes32 globalModelHash, uint256 rewardPool, bool fromTreasury, uint32 cohortSize)
        external
        returns (uint64 roundId)
    {
        _requireRole(msg.sender, ROLE_COORDINATOR);
        if (cohortSize == 0) revert ZeroCohort();
        uint32 n = _rosterSize[msg.sender];
        if (n == 0) revert EmptyRoster(msg.sender);
        _rosterFixed[msg.sender] = true;
        if (fromTreasury) {
            uint256 have = _treasury;
            if (have < rewardPool) revert InsufficientTreasury(have, rewardPool);
            _treasury = have - rewardPool;
        } else {
            _debitBalance(msg.sender, rewardPool);
        }
        _totalPools += rewardPool;

        roundId = ++_roundCount;
        Round storage r = _rounds[roundId];
        r.coordinator = msg.sender;
        r.openedAt = uint64(block.timestamp);
        r.phase = Phase.Submit;
        r.globalModelHash = globalModelHash;
        r.pool = rewardPool;
        r.params = _params;
        uint32 k = cohortSize < n ? cohortSize : n;
        bytes32 seed = _beacon[msg.sender];
        r.cohortSize = k;
        r.cohortSeed = seed;
        _sampleCohort(roundId, seed, n, k);
        emit RoundOpened(roundId, msg.sender, globalModelHash, rewardPool, fromTreasury);
        emit CohortSampled(roundId, seed, k);
    }

    /// @notice Submits the caller's model update (phase Submit). Registered
    ///         ROLE_CLIENT sampled into the round's cohort (NotSampled
    ///         otherwise) with active stake >= minClientStake, using a dataset
    ///         it owns that is not forgotten, claiming at most the dataset's committed
    ///         size in samples (SamplesAboveDataset); escrows `updateDeposit` from its
    ///         balance. One update per client per round, at most
    ///         maxUpdatesPerRound. Returns the update's index in the round.
    function submitUpdate(uint64 roundId, bytes32 blobHash, bytes32 datasetId, uint64 numSamples)
        external
        returns (uint32 index)
    {
        Round storage r = _round(roundId);
        _expectPhase(roundId, r, Phase.Submit);
        _requireRole(msg.sender, ROLE_CLIENT);
        if (!_isSampled(roundId, r.coordinator, msg.sender)) revert NotSampled(roundId, msg.sender);
        uint256 active = _stakes[msg.sender].active;
        uint256 need = r.params.minClientStake;
        if (active < need) revert InsufficientStake(msg.sender, active, need);

        Dataset storage d = _datasets[datasetId];
        address owner = d.owner;
        if (owner == address(0)) revert UnknownDataset(datasetId);
        if (owner != msg.sender) revert NotDatasetOwner(datasetId, msg.sender);
        if (d.forgotten) revert DatasetIsForgotten(datasetId);
        // A client claims at most the samples it committed: FedAvg weighs by the claim.
        if (numSamples > d.size) revert SamplesAboveDataset(datasetId, numSamples, d.size);
        // A run with governance trains on the datasets its members admitted only.
        address coord = r.coordinator;
        if (_govParams[coord].votingPeriod != 0 && !_govAdmittedDataset[coord][datasetId]) {
            revert NotAdmitted(coord, datasetId);
        }
        // A listed dataset trains under a recipe its owner allowed only (deny by default).
        if (_listings[datasetId].active) {
            bytes32 recipe = _roundRecipe[roundId];
            if (!_recipeAllowed[datasetId][recipe]) revert RecipeNotAllowed(datasetId, recipe);
        }

        if (_updateIndexPlusOne[roundId][msg.sender] != 0) revert AlreadySubmitted(roundId, msg.sender);
        index = r.numUpdates;
        uint16 max = r.params.maxUpdatesPerRound;
        if (index >= max) revert TooManyUpdates(roundId, max);

        uint256 deposit = r.params.updateDeposit;
        _debitBalance(msg.sender, deposit);
        _totalEscrowed += deposit;

        r.numUpdates = index + 1;
        _updateIndexPlusOne[roundId][msg.sender] = index + 1;
        Update storage u = _updates[roundId][index];
        u.client = msg.sender;
        u.numSamples = numSamples;
        u.blobHash = blobHash;
        u.datasetId = datasetId;
        emit UpdateSubmitted(roundId, index, msg.sender, blobHash, datasetId, numSamples, deposit);
    }

    /// @notice Submit -> Commit. The round's coordinator only.
    function closeSubmissions(uint64 roundId) external {
        Round storage r = _round(roundId);
        _onlyRoundCoordinator(roundId, r);
        _expectPhase(roundId, r, Phase.Submit);
        r.phase = Phase.Commit;
        emit SubmissionsClosed(roundId, r.numUpdates);
    }

    /// @notice Commits the caller's score vector (phase Commit):
    ///         commitment = keccak256(abi.encode(uint64 roundId, address validator,
    ///         int64[] scores, bytes32 salt)), scores[i] scoring update i.
    ///         Registered ROLE_VALIDATOR with active stake >= minValidatorStake
    ///         (and > 0); the active stake is snapshotted as its weight. Once
    ///         per validator per round, at most maxValidatorsPerRound.
    function commitScores(uint64 roundId, bytes32 commitment) external {
        Round storage r = _round(roundId);
        _expectPhase(roundId, r, Phase.Commit);
        if (commitment == bytes32(0)) revert ZeroCommitment();
        _requireRole(msg.sender, ROLE_VALIDATOR);
        uint256 weight = _stakes[msg.sender].active;
        uint256 need = r.params.minValidatorStake;
        if (need == 0) need = 1;
        if (weight < need) revert InsufficientStake(msg.sender, weight, need);
        if (_validatorIndexPlusOne[roundId][msg.sender] != 0) revert AlreadyCommitted(roundId, msg.sender);
        uint32 index = r.numValidators;
        uint16 max = r.params.maxValidatorsPerRound;
        if (index >= max) revert TooManyValidators(roundId, max);

        r.numValidators = index + 1;
        _validatorIndexPlusOne[roundId][msg.sender] = index + 1;
        ValidatorEntry storage v = _validators[roundId][index];
        v.validator = msg.sender;
        v.weight = weight;
        v.commitment = commitment;
        emit ScoresCommitted(roundId, msg.sender, commitment, weight);
    }

    /// @notice Commit -> Reveal. The round's coordinator only.
    function closeCommits(uint64 roundId) external {
        Round storage r = _round(roundId);
        _onlyRoundCoordinator(roundId, r);
        _expectPhase(roundId, r, Phase.Commit);
        r.phase = Phase.Reveal;
        emit CommitsClosed(roundId, r.numValidators);
    }

    /// @notice Reveals the caller's committed scores (phase Reveal, before the
    ///         first tally call). Must hash to the commitment and have exactly
    ///         one score per update. Committed validators only, once.
    function revealScores(uint64 roundId, int64[] calldata scores, bytes32 salt) external {
        Round storage r = _round(roundId);
        _expectPhase(roundId, r, Phase.Reveal);
        if (r.revealsClosed) revert RevealWindowClosed(roundId);
        uint32 ip1 = _validatorIndexPlusOne[roundId][msg.sender];
        if (ip1 == 0) revert NotCommitted(roundId, msg.sender);
        ValidatorEntry storage v = _validators[roundId][ip1 - 1];
        if (v.revealed) revert AlreadyRevealed(roundId, msg.sender);
        if (scores.length != r.numUpdates) revert BadScoresLength(roundId, scores.length, r.numUpdates);
        if (keccak256(abi.encode(roundId, msg.sender, scores, salt)) != v.commitment) {
            revert BadReveal(roundId, msg.sender);
        }
        v.revealed = true;
        v.scores = scores;
        r.numRevealed += 1;
        // Order-free, so the beacon does not depend on the order reveals arrive in.
        r.revealMix ^= keccak256(abi.encode(msg.sender, salt));
        emit ScoresRevealed(roundId, msg.sender);
    }

    /// @notice Tallies the next `maxUpdates` updates (phase Reveal). The first
    ///         call closes reveals; it may be made by the round's coordinator at
    ///         any time, or by anyone once every committed validator revealed.
    ///         Later batches: anyone. Per update: consensus = lower stake-weighted
    ///         median of the revealed scores (0 and rejected when nobody
    ///         revealed); accepted iff consensus >= acceptThreshold; each revealed
    ///         validator with |score - consensus| <= consensusTolerance gains one
    ///         agreement. After the last update: phase Tallied. Closing reveals
    ///         moves the coordinator's beacon on: beacon = keccak256(abi.encode(
    ///         beacon, roundId, revealMix)).
    function tally(uint64 roundId, uint32 maxUpdates) external {
        if (maxUpdates == 0) revert EmptyBatch();
        Round storage r = _round(roundId);
        _expectPhase(roundId, r, Phase.Reveal);
        if (!r.revealsClosed) {
            if (msg.sender != r.coordinator && r.numRevealed < r.numValidators) {
                revert RevealsStillOpen(roundId, r.numRevealed, r.numValidators);
            }
            r.revealsClosed = true;
            emit RevealsClosed(roundId, r.numRevealed);
            address c = r.coordinator;
            bytes32 beacon = keccak256(abi.encode(_beacon[c], roundId, r.revealMix));
            _beacon[c] = beacon;
            emit BeaconAdvanced(c, roundId, beacon);
        }

        uint32 start = r.tallied;
        uint32 n = r.numUpdates;
        uint32 end = n - start > maxUpdates ? start + maxUpdates : n;

        TallyScratch memory t = _loadTallyScratch(roundId, r);
        for (uint32 i = start; i < end; ++i) {
            _tallyUpdate(roundId, i, t);
        }

        // Persist batch results.
        uint256 nr = t.vIdx.length;
        for (uint256 j; j < nr; ++j) {
            if (t.agree[j] != 0) _validators[roundId][t.vIdx[j]].agreements += t.agree[j];
        }
        r.tallied = end;
        r.acceptedSetHash = t.acceptedSetHash;
        r.acceptedCount = t.acceptedCount;
        r.sumAcceptedScores = t.sumAcceptedScores;

        if (end == n) {
            uint256 sumWA;
            for (uint256 j; j < nr; ++j) {
                sumWA += t.weights[j] * _validators[roundId][t.vIdx[j]].agreements;
            }
            r.sumWeightAgreements = sumWA;
            r.phase = Phase.Tallied;
            emit RoundTallied(roundId, t.acceptedCount, t.acceptedSetHash, t.sumAcceptedScores);
        }
    }

    /// @notice Tallied -> Finalized, recording the aggregate model hash. The
    ///         round's coordinator only; `acceptedSetHash` must equal the
    ///         contract's (AcceptedSetMismatch otherwise).
    function finalize(uint64 roundId, bytes32 aggregateHash, bytes32 acceptedSetHash) external {
        Round storage r = _round(roundId);
        _onlyRoundCoordinator(roundId, r);
        _expectPhase(roundId, r, Phase.Tallied);
        bytes32 expected = r.acceptedSetHash;
        if (acceptedSetHash != expected) revert AcceptedSetMismatch(expected, acceptedSetHash);
        r.aggregateHash = aggregateHash;
        r.phase = Phase.Finalized;
        emit RoundFinalized(roundId, aggregateHash, expected, r.acceptedCount);
    }

    /// @notice Settles the next `maxItems` items (phase Finalized). Items are
    ///         the updates in index order, then the committed validators in
    ///         commit order. Anyone. After the last item the unpaid part of the
    ///         pool (dust included) goes to the treasury: phase Settled.
    function settle(uint64 roundId, uint32 maxItems) external {
        if (maxItems == 0) revert EmptyBatch();
        Round storage r = _round(roundId);
        _expectPhase(roundId, r, Phase.Finalized);
        uint32 nu = r.numUpdates;
        uint32 total = nu + r.numValidators;
        uint32 cur = r.settled;
        uint32 end = total - cur > maxItems ? cur + maxItems : total;

        uint256 pool = r.pool;
        uint256 updatePool = _mulDiv(pool, BPS - r.params.validatorRewardBps, BPS);
        uint256 validatorPool = pool - updatePool;
        uint256 paid = r.poolPaid;
        for (; cur < end; ++cur) {
            if (cur < nu) {
                paid += _settleUpdate(roundId, r, cur, updatePool);
            } else {
                paid += _settleValidator(roundId, r, cur - nu, validatorPool);
            }
        }
        r.settled = end;
        r.poolPaid = paid;

        if (end == total) {
            uint256 rest = pool - paid;
            _totalPools -= rest;
            _treasury += rest;
            r.phase = Phase.Settled;
            emit RoundSettled(roundId, paid, rest);
        }
    }

    // ------------------------------------------------------------------
    // Views
    // ------------------------------------------------------------------

    /// @notice Id of the most recently opened round (0 before the first).
    function currentRound() external view returns (uint64) {
        return _roundCount;
    }

    /// @notice Round summary (all zero for an unknown round). `settled` counts
    ///         settlement items: updates first, then validators.
    function round(uint64 roundId)
        external
        view
        returns (
            uint8 phase,
            address coordinator,
            bytes32 globalModelHash,
            uint256 pool,
            uint32 numUpdates,
            uint32 numValidators,
            uint32 tallied,
            uint32 settled,
            bytes32 acceptedSetHash,
            bytes32 aggregateHash,
            uint64 openedAt
        )
    {
        Round storage r = _rounds[roundId];
        return (
            uint8(r.phase),
            r.coordinator,
            r.globalModelHash,
            r.pool,
            r.numUpdates,
            r.numValidators,
            r.tallied,
            r.settled,
            r.acceptedSetHash,
            r.aggregateHash,
            r.openedAt
        );
    }

    /// @notice The roster of `coordinator`: its size, whether it is fixed (the
    ///         coordinator opened a round) and the beacon its next cohort is
    ///         sampled from.
    function roster(address coordinator) external view returns (uint32 size, bool fixed_, bytes32 beacon) {
        return (_rosterSize[coordinator], _rosterFixed[coordinator], _beacon[coordinator]);
    }

    /// @notice The roster index of `client` in `coordinator`'s roster (`member`
    ///         false when it is not in it).
    function rosterIndex(address coordinator, address client) external view returns (bool member, uint32 index) {
        uint32 ip1 = _rosterIndexPlusOne[coordinator][client];
        if (ip1 == 0) return (false, 0);
        return (true, ip1 - 1);
    }

    /// @notice A round's cohort: the seed it was sampled from and the roster
    ///         indices of its clients, ascending (empty for an unknown round).
    function roundCohort(uint64 roundId) external view returns (bytes32 seed, uint32[] memory indices) {
        Round storage r = _rounds[roundId];
        indices = new uint32[](r.cohortSize);
        uint256 words = (uint256(_rosterSize[r.coordinator]) + 255) >> 8;
        mapping(uint256 => uint256) storage bits = _sampled[roundId];
        uint256 found;
        for (uint256 w; w < words; ++w) {
            uint256 word = bits[w];
            for (uint256 b; word != 0; ++b) {
                if (word & 1 != 0) indices[found++] = uint32((w << 8) | b);
                word >>= 1;
            }
        }
        return (r.cohortSeed, indices);
    }

    /// @notice Whether `client` may submit to a round (it is in its cohort).
    function isSampled(uint64 roundId, address client) external view returns (bool) {
        return _isSampled(roundId, _rounds[roundId].coordinator, client);
    }

    /// @notice Tally/settlement accumulators of a round.
    function roundTally(uint64 roundId)
        external
        view
        returns (
            bool revealsClosed,
            uint32 numRevealed,
            uint32 acceptedCount,
            uint256 sumAcceptedScores,
            uint256 sumWeightAgreements,
            uint256 poolPaid
        )
    {
        Round storage r = _rounds[roundId];
        return (r.revealsClosed, r.numRevealed, r.acceptedCount, r.sumAcceptedScores, r.sumWeightAgreements, r.poolPaid);
    }

    /// @notice The params snapshot a round runs under.
    function roundParams(uint64 roundId) external view returns (Params memory) {
        return _rounds[roundId].params;
    }

    /// @notice Update `index` of a round (reverts UnknownUpdate when out of range).
    ///         consensusScore/accepted are meaningful once the update is tallied.
    function update(uint64 roundId, uint32 index)
        external
        view
        returns (
            address client,
            bytes32 blobHash,
            bytes32 datasetId,
            uint64 numSamples,
            int64 consensusScore,
            bool accepted,
            bool settled
        )
    {
        if (index >= _rounds[roundId].numUpdates) revert UnknownUpdate(roundId, index);
        Update storage u = _updates[roundId][index];
        return (u.client, u.blobHash, u.datasetId, u.numSamples, u.consensusScore, u.accepted, u.settled);
    }

    /// @notice Validator `index` (commit order) of a round (reverts
    ///         UnknownValidator when out of range).
    function roundValidator(uint64 roundId, uint32 index)
        external
        view
        returns (
            address validator,
            uint256 weight,
            bytes32 commitment,
            bool revealed,
            uint32 agreements,
            bool settled
        )
    {
        if (index >= _rounds[roundId].numValidators) revert UnknownValidator(roundId, index);
        ValidatorEntry storage v = _validators[roundId][index];
        return (v.validator, v.weight, v.commitment, v.revealed, v.agreements, v.settled);
    }

    /// @notice Revealed scores of `validator` in a round (empty if not revealed).
    function validatorScores(uint64 roundId, address validator) external view returns (int64[] memory) {
        uint32 ip1 = _validatorIndexPlusOne[roundId][validator];
        if (ip1 == 0) return new int64[](0);
        return _validators[roundId][ip1 - 1].scores;
    }

    // ------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------

    /// @dev Samples `k` of the roster indices [0, n) from `seed` (Floyd's
    ///         algorithm: for j = n-k .. n-1, t = keccak256(abi.encode(seed, j))
    ///         mod (j+1); take t, or j when t is taken) and records them in
    ///         `_sampled[roundId]`. cohort_core::sample_cohort is the same
    ///         algorithm in Rust. Work: O(k) hashes and O(n / 256) memory words.
    function _sampleCohort(uint64 roundId, bytes32 seed, uint256 n, uint256 k) private {
        uint256[] memory words = new uint256[]((n + 255) >> 8);
        for (uint256 j = n - k; j < n; ++j) {
            uint256 t = uint256(keccak256(abi.encode(seed, j))) % (j + 1);
            // t, or j when t is taken, without a branch: the gas does not depend on the draw.
            uint256 taken = (words[t >> 8] >> (t & 255)) & 1;
            t += taken * (j - t);
            words[t >> 8] |= 1 << (t & 255);
        }
        mapping(uint256 => uint256) storage bits = _sampled[roundId];
        for (uint256 w; w < words.length; ++w) {
            uint256 word = words[w];
            if (word != 0) bits[w] = word;
        }
    }

    function _isSampled(uint64 roundId, address coordinator, address client) internal view returns (bool) {
        uint256 ip1 = _rosterIndexPlusOne[coordinator][client];
        if (ip1 == 0) return false;
        uint256 i = ip1 - 1;
        return (_sampled[roundId][i >> 8] >> (i & 255)) & 1 != 0;
    }

    function _round(uint64 roundId) internal view returns (Round storage r) {
        r = _rounds[roundId];
        if (r.phase == Phase.None) revert UnknownRound(roundId);
    }

    function _expectPhase(uint64 roundId, Round storage r, Phase want) internal view {
        Phase have = r.phase;
        if (have != want) revert WrongPhase(roundId, uint8(have), uint8(want));
    }

    function _onlyRoundCoordinator(uint64 roundId, Round storage r) internal view {
        if (msg.sender != r.coordinator) revert NotRoundCoordinator(roundId, msg.sender);
    }

    function _loadTallyScratch(uint64 roundId, Round storage r) internal view returns (TallyScratch memory t) {
        uint256 nr = r.numRevealed;
        uint32 nv = r.numValidators;
        t.vIdx = new uint32[](nr);
        t.weights = new uint256[](nr);
        t.dataSlots = new uint256[](nr);
        t.agree = new uint32[](nr);
        t.keys = new uint256[](nr);
        uint256 j;
        for (uint32 k; k < nv; ++k) {
            ValidatorEntry storage v = _validators[roundId][k];
            if (v.revealed) {
                uint256 w = v.weight;
                t.vIdx[j] = k;
                t.weights[j] = w;
                t.totalWeight += w;
                int64[] storage sc = v.scores;
                uint256 dataSlot;
                assembly ("memory-safe") {
                    // Dynamic storage arrays keep their elements from keccak256(slot).
                    mstore(0x00, sc.slot)
                    dataSlot := keccak256(0x00, 0x20)
                }
                t.dataSlots[j] = dataSlot;
                ++j;
            }
        }
        t.threshold = r.params.acceptThreshold;
        t.tolerance = r.params.consensusTolerance;
        t.acceptedSetHash = r.acceptedSetHash;
        t.acceptedCount = r.acceptedCount;
        t.sumAcceptedScores = r.sumAcceptedScores;
    }

    /// @dev Score of update `i` in a revealed `int64[]` whose elements start at
    ///      storage slot `dataSlot`: four int64 per slot, element i in slot
    ///      dataSlot + i/4 at bit offset 64*(i%4). No bounds check: reveal
    ///      enforces scores.length == numUpdates > i.
    function _readScore(uint256 dataSlot, uint256 i) private view returns (int64 score) {
        assembly ("memory-safe") {
            let word := sload(add(dataSlot, shr(2, i)))
            score := signextend(7, shr(shl(6, and(i, 3)), word))
        }
    }

    /// @dev Sort key packing a score and the revealed-validator position j
    ///      (< 256): ascending key order == ascending score order.
    function _scoreKey(int64 score, uint256 j) private pure returns (uint256) {
        return ((uint256(uint64(score)) ^ SIGN_FLIP) << 8) | j;
    }

    function _keyScore(uint256 key) private pure returns (int64) {
        return int64(uint64((key >> 8) ^ SIGN_FLIP));
    }

    function _tallyUpdate(uint64 roundId, uint32 i, TallyScratch memory t) internal {
        uint256 nr = t.keys.length;
        int64 consensus;
        bool accepted;
        if (nr != 0) {
            uint256[] memory keys = t.keys;
            unchecked {
                for (uint256 j; j < nr; ++j) {
                    keys[j] = _scoreKey(_readScore(t.dataSlots[j], i), j);
                }
                _sortAscending(keys);
                consensus = _lowerWeightedMedian(keys, t.weights, t.totalWeight);
                accepted = consensus >= t.threshold;
                int256 tolerance = t.tolerance;
                for (uint256 j; j < nr; ++j) {
                    uint256 key = keys[j];
                    int256 diff = int256(_keyScore(key)) - int256(consensus);
                    if (diff < 0) diff = -diff;
                    if (diff <= tolerance) ++t.agree[key & 0xff];
                }
            }
        }

        Update storage u = _updates[roundId][i];
        u.consensusScore = consensus;
        address client = u.client;
        if (accepted) {
            u.accepted = true;
            t.acceptedSetHash = keccak256(abi.encode(t.acceptedSetHash, i));
            ++t.acceptedCount;
            if (consensus > 0) t.sumAcceptedScores += uint256(int256(consensus));
            emit UpdateAccepted(roundId, i, client, consensus);
        } else {
            emit UpdateRejected(roundId, i, client, consensus);
        }
    }

    /// @dev In-place insertion sort, ascending (n <= MAX_VALIDATORS_CAP).
    function _sortAscending(uint256[] memory a) private pure {
        assembly ("memory-safe") {
            let base := add(a, 0x20)
            let end := add(base, shl(5, mload(a)))
            for { let q := add(base, 0x20) } lt(q, end) { q := add(q, 0x20) } {
                let key := mload(q)
                let p := q
                for {} gt(p, base) { p := sub(p, 0x20) } {
                    let prev := mload(sub(p, 0x20))
                    if iszero(gt(prev, key)) { break }
                    mstore(p, prev)
                }
                mstore(p, key)
            }
        }
    }

    /// @dev Lower stake-weighted median of the sorted `keys`: the smallest
    ///      score s such that the weight of scores <= s is >= half the total,
    ///      i.e. 2 * W(<= s) >= total. `weights` is indexed by the position
    ///      packed in each key.
    function _lowerWeightedMedian(uint256[] memory keys, uint256[] memory weights, uint256 total)
        private
        pure
        returns (int64)
    {
        uint256 n = keys.length;
        uint256 cum;
        unchecked {
            for (uint256 j; j < n; ++j) {
                uint256 key = keys[j];
                cum += weights[key & 0xff];
                if (cum >= total - cum) return _keyScore(key);
            }
            return _keyScore(keys[n - 1]);
        }
    }

    function _settleUpdate(uint64 roundId, Round storage r, uint32 index, uint256 updatePool)
        internal
        returns (uint256 reward)
    {
        Update storage u = _updates[roundId][index];
        address client = u.client;
        uint256 deposit = r.params.updateDeposit;
        _totalEscrowed -= deposit;
        u.settled = true;
        if (u.accepted) {
            _creditBalance(client, deposit);
            emit Refunded(roundId, client, deposit);
            // Paid in proportion to a positive consensus score only: an accepted update that
            // brought nothing (a free-rider's, scoring 0) or made things worse is refunded its
            // deposit and paid nothing, also when no update scored above 0 (the pool then
            // goes to the treasury at the end of settlement).
            uint256 sumAcc = r.sumAcceptedScores;
            int64 score = u.consensusScore;
            if (score > 0 && sumAcc != 0) {
                reward = _mulDiv(updatePool, uint256(int256(score)), sumAcc);
                // Paid per unit of score, at most (params.rewardPerScore; 0: the whole share).
                uint256 perScore = r.params.rewardPerScore;
                if (perScore != 0) {
                    uint256 cap = _mulDiv(uint256(int256(score)), perScore, uint256(int256(SCORE_SCALE)));
                    if (cap < reward) reward = cap;
                }
            }
            if (reward != 0) {
                _totalPools -= reward;
                _creditBalance(client, reward);
                rewardsByDataset[u.datasetId] += reward;
                emit Rewarded(roundId, client, reward);
            }
        } else {
            _treasury += deposit;
            emit DepositForfeited(roundId, client, deposit);
            _slash(roundId, client, r.params.slashRejectBps, SlashReason.RejectedUpdate);
        }
    }

    function _settleValidator(uint64 roundId, Round storage r, uint32 index, uint256 validatorPool)
        internal
        returns (uint256 reward)
    {
        ValidatorEntry storage v = _validators[roundId][index];
        address who = v.validator;
        bool revealed = v.revealed;
        uint32 agreements = v.agreements;
        v.settled = true;
        emit ValidatorSettled(roundId, who, revealed, agreements);
        if (!revealed) {
            _slash(roundId, who, r.params.slashNoRevealBps, SlashReason.NoReveal);
            return 0;
        }
        uint256 sumWA = r.sumWeightAgreements;
        if (sumWA == 0 || agreements == 0) return 0;
        reward = _mulDiv(validatorPool, v.weight * agreements, sumWA);
        if (reward != 0) {
            _totalPools -= reward;
            _creditBalance(who, reward);
            emit Rewarded(roundId, who, reward);
        }
    }
}
