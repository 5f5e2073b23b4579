// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortRuns
/// @notice Per-run governance and the data market. A run is named by its coordinator's address
///         (its rounds, roster and parties).
///
///         Governance. A coordinator enables it for its run once (`enableRunGovernance`), after
///         enrolling the founding clients and naming the founding datasets. From then on the
///         run's members (its coordinator and roster clients) bond tokens to it (`govBond`) and
///         decide by proposals: propose -> vote, weighted by bond -> timelock -> execute.
///         A proposal passes when the votes cast reach `quorumBps` of the stake bonded when it
///         was created and more than `majorityBps` of them are in favour. Executed, it admits a
///         client (the coordinator's `extendRoster` takes only admitted clients), admits a
///         dataset (updates of the run name admitted datasets only), approves an unlearning
///         request (the dataset's unlearning cannot be executed before), or records new
///         hyperparameters by hash (the run applies them from its next round). A vote counts
///         once, with the bond held since before the proposal (a bond raised later does not
///         vote on it: the same tokens cannot vote twice through another address), and locks
///         the bond until the vote ends.
///
///         Market. A dataset's owner lists it at a price per round of use with an allowlist of
///         training recipes (the hash of cohort's version, the run's config and the adapter
///         targets); no recipe is allowed until the owner allows it. A run's coordinator sets
///         each round's recipe and its fee split; sponsors fund the run's royalties; once a
///         round has aggregated an update trained on a listed dataset under an allowed recipe,
///         anyone can pay its royalty from that fund, once per round and dataset: the
///         coordinator's and treasury's shares, the rest to the owner. A client whose listed
///         dataset does not allow the round's recipe records its refusal (`refuseRound`).
///
/// @dev Deployed by `CohortStages`' constructor and run only by delegatecall in `Cohort`'s
///      storage (Cohort's fallback runs CohortStages, whose fallback runs this), so it inherits
///      CohortBase alone (build.js checks the layouts are identical). Bonds and royalty funds
///      are counted in `_totalEscrowed`, so the token supply stays conserved.
contract CohortRuns is CohortBase {
    uint8 internal constant KIND_HYPERPARAMS = 1;
    uint8 internal constant KIND_ADMIT_CLIENT = 2;
    uint8 internal constant KIND_ADMIT_DATASET = 3;
    uint8 internal constant KIND_APPROVE_UNLEARNING = 4;
    /// @notice The longest voting period and timelock (a year).
    uint64 public constant MAX_GOV_PERIOD = 365 days;

    // ------------------------------------------------------------------
    // Governance
    // ------------------------------------------------------------------

    /// @notice Enables governance of the caller's run, once. Coordinator only. `datasets`:
    ///         the founding datasets, admitted without a vote (each must exist and not be
    ///         forgotten). Reverts InvalidGovParam(field): quorumBps (0) in 1..=10_000,
    ///         majorityBps (1) in 5_000..=9_999, votingPeriod (2) in 1..=MAX_GOV_PERIOD,
    ///         timelock (3) <= MAX_GOV_PERIOD.
    function enableRunGovernance(GovParams calldata p, bytes32[] calldata datasets) external {
        _requireRole(msg.sender, ROLE_COORDINATOR);
        if (_govParams[msg.sender].votingPeriod != 0) revert GovernanceEnabled(msg.sender);
        if (p.quorumBps == 0 || p.quorumBps > BPS) revert InvalidGovParam(0);
        if (p.majorityBps < BPS / 2 || p.majorityBps >= BPS) revert InvalidGovParam(1);
        if (p.votingPeriod == 0 || p.votingPeriod > MAX_GOV_PERIOD) revert InvalidGovParam(2);
        if (p.timelock > MAX_GOV_PERIOD) revert InvalidGovParam(3);
        _govParams[msg.sender] = p;
        for (uint256 i; i < datasets.length; ++i) {
            _admitDataset(msg.sender, datasets[i], 0);
        }
        emit RunGovernanceEnabled(msg.sender, p, uint32(datasets.length));
    }

    /// @notice A run's governance parameters (all zero when it has none).
    function runGovernance(address run) external view returns (GovParams memory) {
        return _govParams[run];
    }

    /// @notice Bonds `amount` of the caller's balance to `run`'s governance. Members only: the
    ///         run's coordinator and its roster clients.
    function govBond(address run, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        _requireGov(run);
        if (msg.sender != run && _rosterIndexPlusOne[run][msg.sender] == 0) revert NotAMember(run, msg.sender);
        _debitBalance(msg.sender, amount);
        _totalEscrowed += amount;
        _govBonded[run] += amount;
        uint256 bond = _govBond[run][msg.sender] + amount;
        _govBond[run][msg.sender] = bond;
        _govBondEpoch[run][msg.sender] = _proposalCount[run];
        emit GovBonded(run, msg.sender, amount, bond);
    }

    /// @notice Returns `amount` of the caller's bond to its balance, once the votes it cast
    ///         have ended.
    function govUnbond(address run, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 bond = _govBond[run][msg.sender];
        if (bond < amount) revert InsufficientStake(msg.sender, bond, amount);
        uint64 until = _govLockedUntil[run][msg.sender];
        if (block.timestamp < until) revert BondLocked(run, msg.sender, until);
        bond -= amount;
        _govBond[run][msg.sender] = bond;
        _govBonded[run] -= amount;
        _totalEscrowed -= amount;
        _creditBalance(msg.sender, amount);
        emit GovUnbonded(run, msg.sender, amount, bond);
    }

    /// @notice `member`'s bond in `run`, the run's bonded total, and until when the bond is
    ///         locked by votes.
    function govBondOf(address run, address member)
        external
        view
        returns (uint256 bond, uint256 total, uint64 lockedUntil)
    {
        return (_govBond[run][member], _govBonded[run], _govLockedUntil[run][member]);
    }

    /// @notice Proposes, as a bonded member of `run`, what `kind` says (see `Proposal`).
    ///         Checked now: a client to admit is a registered client outside the roster and not
    ///         admitted; a dataset to admit exists, is not forgotten and not admitted; an
    ///         unlearning request is open and its dataset was admitted to this run;
    ///         hyperparameters have a non-zero hash. Returns the proposal's id (1, 2, ...).
    function propose(address run, uint8 kind, bytes32 target, bytes32 payloadHash) external returns (uint64 id) {
        GovParams storage g = _requireGov(run);
        if (_govBond[run][msg.sender] == 0) revert NoBond(run, msg.sender);
        if (kind == KIND_HYPERPARAMS) {
            if (payloadHash == bytes32(0)) revert InvalidProposal(kind, target);
        } else if (kind == KIND_ADMIT_CLIENT) {
            address c = _targetAddress(kind, target);
            if (_participants[c].roles & ROLE_CLIENT == 0) revert MissingRole(c, ROLE_CLIENT);
            if (_rosterIndexPlusOne[run][c] != 0) revert AlreadyInRoster(c);
            if (_govAdmittedClient[run][c]) revert InvalidProposal(kind, target);
        } else if (kind == KIND_ADMIT_DATASET) {
            Dataset storage d = _datasets[target];
            if (d.owner == address(0)) revert UnknownDataset(target);
            if (d.forgotten) revert DatasetIsForgotten(target);
            if (_govAdmittedDataset[run][target]) revert InvalidProposal(kind, target);
        } else if (kind == KIND_APPROVE_UNLEARNING) {
            uint256 rid = uint256(target);
            if (rid == 0 || rid > _requestCount) revert UnknownRequest(uint64(rid));
            UnlearningRequest storage q = _requests[uint64(rid)];
            if (q.phase != UnlearningPhase.Requested) {
                revert WrongRequestPhase(uint64(rid), uint8(q.phase), uint8(UnlearningPhase.Requested));
            }
            if (_datasetRun[q.datasetId] != run) revert NotAdmitted(run, q.datasetId);
        } else {
            revert InvalidProposal(kind, target);
        }
        id = ++_proposalCount[run];
        Proposal storage pr = _proposals[run][id];
        uint64 ends = uint64(block.timestamp) + g.votingPeriod;
        pr.proposer = msg.sender;
        pr.kind = kind;
        pr.createdAt = uint64(block.timestamp);
        pr.votingEnds = ends;
        pr.executableAt = ends + g.timelock;
        pr.target = target;
        pr.payloadHash = payloadHash;
        pr.snapshotTotal = _govBonded[run];
        emit Proposed(run, id, msg.sender, kind, target, payloadHash, pr.snapshotTotal);
    }

    /// @notice Votes on a proposal with the caller's whole bond, once, while voting is open.
    ///         The bond must predate the proposal; it stays locked until voting ends.
    function vote(address run, uint64 proposalId, bool support) external {
        Proposal storage pr = _proposal(run, proposalId);
        if (block.timestamp >= pr.votingEnds) revert VotingClosed(run, proposalId, pr.votingEnds);
        uint256 weight = _govBond[run][msg.sender];
        if (weight == 0) revert NoBond(run, msg.sender);
        if (_govBondEpoch[run][msg.sender] >= proposalId) revert BondAfterProposal(run, proposalId, msg.sender);
        mapping(address => uint8) storage votes = _votes[run][proposalId];
        if (votes[msg.sender] != 0) revert AlreadyVoted(run, proposalId, msg.sender);
        votes[msg.sender] = support ? 1 : 2;
        if (support) pr.yes += weight;
        else pr.no += weight;
        if (_govLockedUntil[run][msg.sender] < pr.votingEnds) _govLockedUntil[run][msg.sender] = pr.votingEnds;
        emit Voted(run, proposalId, msg.sender, support, weight);
    }

    /// @notice Executes a passed proposal once its timelock has run out. Anyone. Reverts
    ///         VotingOpen, Timelocked, ProposalRejected (quorum or majority missed) or
    ///         AlreadyExecuted.
    function execute(address run, uint64 proposalId) external {
        Proposal storage pr = _proposal(run, proposalId);
        if (pr.executed) revert AlreadyExecuted(run, proposalId);
        if (block.timestamp < pr.votingEnds) revert VotingOpen(run, proposalId, pr.votingEnds);
        if (block.timestamp < pr.executableAt) revert Timelocked(run, proposalId, pr.executableAt);
        if (!_passed(_govParams[run], pr)) revert ProposalRejected(run, proposalId);
        pr.executed = true;
        pr.executedAt = uint64(block.timestamp);
        pr.roundsAtExecution = _roundCount;
        uint8 kind = pr.kind;
        bytes32 target = pr.target;
        if (kind == KIND_ADMIT_CLIENT) {
            address c = _targetAddress(kind, target);
            _govAdmittedClient[run][c] = true;
            emit ClientAdmitted(run, c, proposalId);
        } else if (kind == KIND_ADMIT_DATASET) {
            _admitDataset(run, target, proposalId);
        } else if (kind == KIND_APPROVE_UNLEARNING) {
            _unlearningApproved[uint64(uint256(target))] = true;
            emit UnlearningApproved(run, uint64(uint256(target)), proposalId);
        }
        emit ProposalExecuted(run, proposalId, kind, target, pr.payloadHash);
    }

    /// @notice A proposal (proposer == address(0) when unknown) and whether it has passed so
    ///         far (quorum and majority on the votes cast).
    function proposal(address run, uint64 proposalId) external view returns (Proposal memory p, bool passing) {
        p = _proposals[run][proposalId];
        passing = p.proposer != address(0) && _passed(_govParams[run], p);
    }

    /// @notice How many proposals `run` has had (ids are 1..=count).
    function proposalCount(address run) external view returns (uint64) {
        return _proposalCount[run];
    }

    /// @notice `voter`'s vote on a proposal: 0 none, 1 for, 2 against.
    function voteOf(address run, uint64 proposalId, address voter) external view returns (uint8) {
        return _votes[run][proposalId][voter];
    }

    /// @notice Whether `run`'s governance admitted `client` / `datasetId`; the run a dataset was
    ///         first admitted to; whether an unlearning request was approved.
    function admitted(address run, address client, bytes32 datasetId)
        external
        view
        returns (bool clientAdmitted, bool datasetAdmitted, address datasetRun)
    {
        return (_govAdmittedClient[run][client], _govAdmittedDataset[run][datasetId], _datasetRun[datasetId]);
    }

    /// @notice Whether the run's governance approved unlearning request `requestId`.
    function unlearningApproved(uint64 requestId) external view returns (bool) {
        return _unlearningApproved[requestId];
    }

    // ------------------------------------------------------------------
    // Market
    // ------------------------------------------------------------------

    /// @notice Lists (or re-prices) the caller's dataset at `pricePerRound` base units per
    ///         round of use and allows `recipes` (more can be allowed later; none is by
    ///         default). The dataset's owner, while it is not forgotten.
    function listDataset(bytes32 datasetId, uint256 pricePerRound, bytes32[] calldata recipes) external {
        _ownDataset(datasetId);
        if (pricePerRound == 0) revert ZeroAmount();
        if (pricePerRound > MAX_SUPPLY) revert PriceAboveSupply(pricePerRound, MAX_SUPPLY);
        Listing storage l = _listings[datasetId];
        l.pricePerRound = pricePerRound;
        if (!l.active) {
            l.active = true;
            if (l.listedAt == 0) l.listedAt = uint64(block.timestamp);
        }
        emit DatasetListed(datasetId, msg.sender, pricePerRound);
        for (uint256 i; i < recipes.length; ++i) {
            _allowRecipe(datasetId, l, recipes[i], true);
        }
    }

    /// @notice Withdraws the caller's listing: no round opened from now on owes it a royalty
    ///         (rounds opened while it was listed still do).
    function delistDataset(bytes32 datasetId) external {
        _ownDataset(datasetId);
        Listing storage l = _listings[datasetId];
        if (!l.active) revert NotListed(datasetId);
        l.active = false;
        l.delistedAt = uint64(block.timestamp);
        emit DatasetDelisted(datasetId, msg.sender);
    }

    /// @notice Allows or disallows a training recipe on the caller's listed dataset.
    function allowRecipe(bytes32 datasetId, bytes32 recipe, bool allowed) external {
        _ownDataset(datasetId);
        Listing storage l = _listings[datasetId];
        if (!l.active) revert NotListed(datasetId);
        _allowRecipe(datasetId, l, recipe, allowed);
    }

    /// @notice A dataset's listing and whether `recipe` may train on it.
    function listing(bytes32 datasetId, bytes32 recipe) external view returns (Listing memory l, bool allowed) {
        return (_listings[datasetId], _recipeAllowed[datasetId][recipe]);
    }

    /// @notice Sets the caller's run's royalty split: `coordinatorBps` to it, `treasuryBps` to
    ///         the treasury, the rest to each dataset's owner. Coordinator only; before its
    ///         first round (the roster is fixed then), so parties know it when they enrol.
    function setMarketFees(uint16 coordinatorBps, uint16 treasuryBps) external {
        _requireRole(msg.sender, ROLE_COORDINATOR);
        if (_rosterFixed[msg.sender]) revert RosterFixed(msg.sender);
        if (uint256(coordinatorBps) + treasuryBps > BPS) revert InvalidFees(coordinatorBps, treasuryBps);
        _marketFees[msg.sender] = MarketFees(coordinatorBps, treasuryBps);
        emit MarketFeesSet(msg.sender, coordinatorBps, treasuryBps);
    }

    /// @notice A run's fee split, its royalty fund and what its royalties paid so far.
    function marketOf(address run) external view returns (MarketFees memory fees, uint256 fund) {
        return (_marketFees[run], _royaltyFund[run]);
    }

    /// @notice Records the recipe a round trains with. The round's coordinator, once, while the
    ///         round takes updates.
    function setRoundRecipe(uint64 roundId, bytes32 recipe) external {
        Round storage r = _knownRound(roundId);
        if (r.coordinator != msg.sender) revert NotRoundCoordinator(roundId, msg.sender);
        if (r.phase != Phase.Submit) revert WrongPhase(roundId, uint8(r.phase), uint8(Phase.Submit));
        if (recipe == bytes32(0)) revert ZeroCommitment();
        if (_roundRecipe[roundId] != bytes32(0)) revert RecipeSet(roundId);
        _roundRecipe[roundId] = recipe;
        emit RoundRecipeSet(roundId, msg.sender, recipe);
    }

    /// @notice A round's recipe (zero when none was set).
    function roundRecipe(uint64 roundId) external view returns (bytes32) {
        return _roundRecipe[roundId];
    }

    /// @notice Records that the caller's listed dataset sits a round out because the round's
    ///         recipe is not allowed on it (a refusal where the recipe is allowed reverts).
    function refuseRound(uint64 roundId, bytes32 datasetId) external {
        _knownRound(roundId);
        _ownDataset(datasetId);
        if (!_listings[datasetId].active) revert NotListed(datasetId);
        bytes32 recipe = _roundRecipe[roundId];
        if (recipe != bytes32(0) && _recipeAllowed[datasetId][recipe]) revert RecipeAllowedThere(datasetId, recipe);
        emit RoundRefused(roundId, datasetId, msg.sender, recipe);
    }

    /// @notice Adds `amount` of the caller's balance to `run`'s royalty fund. Anyone.
    function fundRoyalties(address run, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        _requireRole(run, ROLE_COORDINATOR);
        _debitBalance(msg.sender, amount);
        _totalEscrowed += amount;
        _royaltyFund[run] += amount;
        emit RoyaltyFunded(run, msg.sender, amount);
    }

    /// @notice Pays the royalty of the dataset that update `index` of round `roundId` trained
    ///         on, from the round's run's fund. Anyone, once per round and dataset, once the
    ///         round is finalized with the update accepted, if the dataset was listed when the
    ///         round opened (and not delisted since before it) and allows the round's recipe.
    function payRoyalty(uint64 roundId, uint32 index) external {
        Round storage r = _knownRound(roundId);
        if (r.phase < Phase.Finalized) revert WrongPhase(roundId, uint8(r.phase), uint8(Phase.Finalized));
        if (index >= r.numUpdates) revert UnknownUpdate(roundId, index);
        Update storage u = _updates[roundId][index];
        if (!u.accepted) revert NotTrainedOn(roundId, index);
        bytes32 id = u.datasetId;
        Listing storage l = _listings[id];
        uint64 opened = r.openedAt;
        if (l.listedAt == 0 || l.listedAt > opened || (!l.active && l.delistedAt < opened)) revert NotListed(id);
        bytes32 recipe = _roundRecipe[roundId];
        if (!_recipeAllowed[id][recipe]) revert RecipeNotAllowed(id, recipe);
        if (_royaltyPaid[roundId][id]) revert RoyaltyAlreadyPaid(roundId, id);
        address run = r.coordinator;
        uint256 price = l.pricePerRound;
        uint256 fund = _royaltyFund[run];
        if (fund < price) revert InsufficientRoyaltyFund(run, fund, price);
        _royaltyPaid[roundId][id] = true;
        _royaltyFund[run] = fund - price;
        _totalEscrowed -= price;
        _royaltiesByDataset[id] += price;
        MarketFees storage f = _marketFees[run];
        uint256 toCoordinator = _mulDiv(price, f.coordinatorBps, BPS);
        uint256 toTreasury = _mulDiv(price, f.treasuryBps, BPS);
        uint256 toOwner = price - toCoordinator - toTreasury;
        address owner = _datasets[id].owner;
        _creditBalance(owner, toOwner);
        if (toCoordinator != 0) _creditBalance(run, toCoordinator);
        _treasury += toTreasury;
        emit RoyaltyPaid(roundId, id, owner, toOwner, toCoordinator, toTreasury);
    }

    /// @notice Whether a round's royalty for a dataset was paid, and the dataset's royalties
    ///         so far.
    function royalty(uint64 roundId, bytes32 datasetId) external view returns (bool paid, uint256 total) {
        return (_royaltyPaid[roundId][datasetId], _royaltiesByDataset[datasetId]);
    }

    // ------------------------------------------------------------------
    // Internal
    // ------------------------------------------------------------------

    function _requireGov(address run) internal view returns (GovParams storage g) {
        g = _govParams[run];
        if (g.votingPeriod == 0) revert NoGovernance(run);
    }

    function _proposal(address run, uint64 proposalId) internal view returns (Proposal storage pr) {
        pr = _proposals[run][proposalId];
        if (pr.proposer == address(0)) revert UnknownProposal(run, proposalId);
    }

    /// @dev Quorum: votes cast >= quorumBps of the bonded stake at creation (and some votes);
    ///      majority: votes for > majorityBps of the votes cast.
    function _passed(GovParams storage g, Proposal memory pr) internal view returns (bool) {
        uint256 cast = pr.yes + pr.no;
        if (cast == 0) return false;
        if (cast * BPS < uint256(g.quorumBps) * pr.snapshotTotal) return false;
        return pr.yes * BPS > uint256(g.majorityBps) * cast;
    }

    function _targetAddress(uint8 kind, bytes32 target) internal pure returns (address c) {
        if (uint256(target) >> 160 != 0 || target == bytes32(0)) revert InvalidProposal(kind, target);
        c = address(uint160(uint256(target)));
    }

    function _admitDataset(address run, bytes32 id, uint64 proposalId) internal {
        Dataset storage d = _datasets[id];
        if (d.owner == address(0)) revert UnknownDataset(id);
        if (d.forgotten) revert DatasetIsForgotten(id);
        _govAdmittedDataset[run][id] = true;
        if (_datasetRun[id] == address(0)) _datasetRun[id] = run;
        emit DatasetAdmitted(run, id, proposalId);
    }

    function _ownDataset(bytes32 id) internal view {
        Dataset storage d = _datasets[id];
        if (d.owner == address(0)) revert UnknownDataset(id);
        if (d.owner != msg.sender) revert NotDatasetOwner(id, msg.sender);
        if (d.forgotten) revert DatasetIsForgotten(id);
    }

    function _allowRecipe(bytes32 id, Listing storage l, bytes32 recipe, bool allowed) internal {
        if (recipe == bytes32(0)) revert ZeroCommitment();
        mapping(bytes32 => bool) storage set = _recipeAllowed[id];
        if (set[recipe] != allowed) {
            set[recipe] = allowed;
            if (allowed) ++l.recipes;
            else --l.recipes;
        }
        emit RecipeAllowed(id, recipe, allowed);
    }

    function _knownRound(uint64 roundId) internal view returns (Round storage r) {
        r = _rounds[roundId];
        if (r.coordinator == address(0)) revert UnknownRound(roundId);
    }
}
