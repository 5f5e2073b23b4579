// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

/// @title CohortBase
/// @notice Shared storage, constants, types, events, errors and internal token
///         helpers for every Cohort module. All modules inherit this contract, so
///         there is exactly one copy of the storage below in the deployed `Cohort`.
/// @dev Token amounts are uint256 base units (1 token = 1e18 base units).
///      Scores are int64 fixed-point with SCORE_SCALE = 1e6 (1.0 == 1_000_000).
///      Basis points (bps): 10_000 == 100%. Time is `block.timestamp` (seconds).
abstract contract CohortBase {
    // ------------------------------------------------------------------
    // Constants
    // ------------------------------------------------------------------

    /// @notice Fixed-point scale of every score-like int64 (1.0 == 1e6).
    int64 public constant SCORE_SCALE = 1_000_000;
    /// @notice Base units per whole token.
    uint256 public constant TOKEN_UNIT = 1e18;
    /// @notice Denominator of every basis-point parameter.
    uint16 public constant BPS = 10_000;

    uint8 public constant ROLE_COORDINATOR = 1;
    uint8 public constant ROLE_CLIENT = 2;
    uint8 public constant ROLE_VALIDATOR = 4;
    uint8 public constant ROLE_DATA_OWNER = 8;
    uint8 internal constant ALL_ROLES = 15;

    /// @notice Hard upper bound on `Params.maxValidatorsPerRound` (keeps the
    ///         per-update tally work and the validator loops bounded).
    uint16 public constant MAX_VALIDATORS_CAP = 64;

    /// @notice Most clients a coordinator's roster may hold (a run's most clients).
    uint32 public constant MAX_ROSTER = 100_000;

    /// @notice Upper bound on `StageParams.stageQuorum` (bounds the attesters of a claim, so
    ///         the duplicate check and the reward loop of a slash stay small).
    uint16 public constant MAX_STAGE_QUORUM = 16;

    /// @notice Cap on total minted supply (keeps every reward product far
    ///         from uint256 overflow).
    uint256 public constant MAX_SUPPLY = type(uint128).max;

    // ------------------------------------------------------------------
    // Types
    // ------------------------------------------------------------------

    /// @notice Governance-tunable protocol parameters. A round snapshots the
    ///         parameters in force when it is opened and uses that copy for its
    ///         whole life. Field order is the ABI tuple order.
    struct Params {
        int64 acceptThreshold; // consensus score (SCORE_SCALE) needed to accept an update
        uint256 updateDeposit; // base units escrowed per submitted update
        uint256 minClientStake; // active stake a client needs to submit
        uint256 minValidatorStake; // active stake a validator needs to commit
        uint16 slashRejectBps; // share of a rejected client's stake slashed
        uint16 slashNoRevealBps; // share of a non-revealing validator's stake slashed
        uint16 validatorRewardBps; // share of a round's pool for validators
        int64 consensusTolerance; // |score - consensus| <= tolerance counts as agreement
        uint64 unbondingPeriod; // seconds between requestUnstake and withdraw
        uint16 maxUpdatesPerRound;
        uint16 maxValidatorsPerRound;
        // Base units paid per 1.0 (SCORE_SCALE) of consensus score, at most: an accepted
        // update is paid min(its share of the pool by score, score * rewardPerScore), so a
        // round pays in proportion to what its updates bring (the rest of the pool goes to the
        // treasury); 0 splits the whole pool by score.
        uint256 rewardPerScore;
    }

    enum Phase {
        None,
        Submit,
        Commit,
        Reveal,
        Tallied,
        Finalized,
        Settled
    }

    enum SlashReason {
        RejectedUpdate,
        NoReveal
    }

    enum UnlearningPhase {
        None,
        Requested,
        Executed,
        Verified
    }

    struct Participant {
        uint8 roles;
        uint64 registeredAt;
        bytes32 keyHash;
    }

    struct StakeInfo {
        uint256 active;
        uint256 unbonding;
        uint64 unlockAt;
    }

    struct Dataset {
        address owner;
        uint64 size;
        uint64 committedAt;
        bool forgotten;
        bytes32 merkleRoot;
        bytes32 manifestHash;
    }

    struct Round {
        address coordinator;
        uint64 openedAt;
        Phase phase;
        bool revealsClosed;
        uint32 numUpdates;
        uint32 numValidators;
        uint32 numRevealed;
        uint32 tallied; // updates tallied so far
        uint32 settled; // settlement items processed (updates first, then validators)
        uint32 acceptedCount;
        bytes32 globalModelHash;
        uint256 pool; // reward pool escrowed at openRound
        uint256 poolPaid; // rewards paid out of `pool` so far
        uint256 sumAcceptedScores; // sum of positive consensus scores of accepted updates
        uint256 sumWeightAgreements; // sum(weight * agreements) over revealed validators
        bytes32 acceptedSetHash; // running hash over accepted indices (see README)
        bytes32 aggregateHash;
        Params params; // snapshot taken at openRound
        uint32 cohortSize; // clients sampled from the coordinator's roster
        bytes32 cohortSeed; // the coordinator's beacon when the round opened
        bytes32 revealMix; // XOR of keccak256(abi.encode(validator, salt)) over the reveals
    }

    struct Update {
        address client;
        int64 consensusScore;
        bool accepted;
        bool settled;
        uint64 numSamples;
        bytes32 blobHash;
        bytes32 datasetId;
    }

    struct ValidatorEntry {
        address validator;
        bool revealed;
        bool settled;
        uint32 agreements;
        uint256 weight; // active stake snapshotted at commit
        bytes32 commitment;
        int64[] scores;
    }

    /// @notice What an unlearning's evidence says, SCORE_SCALE fixed point: the forget-set
    ///         metric (accuracy for a classifier, perplexity for a language model), the
    ///         membership-inference AUC (forget set against unseen data) and the test metric
    ///         of the unlearned model; with a model retrained without the data (the oracle),
    ///         the differences from its values (unlearned minus oracle).
    struct UnlearningEvidence {
        int64 forgetMetric;
        int64 miaAuc;
        int64 testMetric;
        bool hasOracle;
        int64 forgetGap;
        int64 miaGap;
    }

    struct UnlearningRequest {
        bytes32 datasetId;
        address requester;
        uint64 requestedAt;
        UnlearningPhase phase;
        uint8 method;
        /// @dev Executions the verifiers rejected so far (each reopened the request).
        uint32 rejections;
        bytes32 reasonHash;
        /// @dev The forget set the requester discloses to the verifier, committed by hash.
        bytes32 forgetSetHash;
        bytes32 resultModelHash;
        address executor;
        uint64 executedAt;
        uint256 clawedBack;
        bytes32 evidenceHash;
        address verifier;
        uint64 verifiedAt;
        UnlearningEvidence evidence;
        /// @dev The manifest of the forgotten client's blobs deleted after verification (0: none).
        bytes32 deletedBlobs;
    }

    /// @notice Governance-tunable parameters of stage servers (model-parallel layers served
    ///         for pay). Read live; field order is the ABI tuple order.
    struct StageParams {
        uint256 minStageStake; // active stake a stage server (and an attesting verifier) needs
        uint64 stageChallengeWindow; // seconds from a period's last payment to its release
        uint16 stageQuorum; // distinct verifiers whose same claim slashes a server
        uint16 stageSlashBps; // share of the server's stake (active + unbonding) slashed
        uint16 stageAttesterBps; // share of the slashed amount paid to the claim's attesters
    }

    /// @dev A stage server's declaration. It exists iff `modelHash != 0`; it is slashed (for
    ///      good) iff `slashClaim != 0`.
    struct StageServer {
        bytes32 modelHash;
        uint32 firstLayer;
        uint32 endLayer; // exclusive: layers firstLayer..endLayer
        uint64 registeredAt;
        uint64 slashedAt;
        bytes32 slashClaim; // the claim that slashed it
    }

    /// @dev Pay held for a server and a period: `amount` is what is held (after refunds), or
    ///      what was paid out once `released`.
    struct StageEscrow {
        uint256 amount;
        uint64 tokens; // tokens (model tokens) paid for, as the payers declared
        uint64 releaseAt; // last payment's time + stageChallengeWindow
        bool released;
    }

    /// @notice A run's governance (its coordinator's, `enableRunGovernance`): proposals pass
    ///         with votes of at least `quorumBps` of the bonded stake at their creation and more
    ///         than `majorityBps` of the votes cast in favour, and execute `timelock` seconds
    ///         after `votingPeriod`. Enabled iff votingPeriod != 0.
    struct GovParams {
        uint16 quorumBps;
        uint16 majorityBps;
        uint64 votingPeriod;
        uint64 timelock;
    }

    /// @dev What a proposal does once executed (`kind`): 1 hyperparameters (payloadHash: the
    ///      SHA-256 of the new settings, applied from the run's next round), 2 admit a client
    ///      (target: its address), 3 admit a dataset (target: its id), 4 approve an unlearning
    ///      request (target: its id).
    struct Proposal {
        address proposer;
        uint8 kind;
        bool executed;
        uint64 createdAt;
        uint64 votingEnds;
        uint64 executableAt;
        uint64 executedAt;
        uint64 roundsAtExecution; // the ledger's round count when executed (hyperparameters
            // apply to the run's rounds opened after it)
        bytes32 target;
        bytes32 payloadHash;
        uint256 snapshotTotal; // bonded stake when the proposal was created
        uint256 yes;
        uint256 no;
    }

    /// @notice A dataset offered for training at `pricePerRound` base units per round of use;
    ///         only recipes its owner allows may train on it (deny by default).
    struct Listing {
        uint256 pricePerRound;
        bool active;
        uint32 recipes; // recipes allowed
        uint64 listedAt; // first listed
        uint64 delistedAt; // last delisted (0: never)
    }

    /// @notice How a run's royalties are split: `coordinatorBps` to the coordinator,
    ///         `treasuryBps` to the protocol treasury, the rest to the dataset's owner.
    struct MarketFees {
        uint16 coordinatorBps;
        uint16 treasuryBps;
    }

    // ------------------------------------------------------------------
    // Storage
    // ------------------------------------------------------------------

    /// @notice Governance address (deployer at construction).
    address public governance;
    Params internal _params;

    // token
    mapping(address => uint256) internal _balances;
    uint256 internal _totalMinted;
    uint256 internal _totalBalances;
    uint256 internal _totalStaked; // active + unbonding
    uint256 internal _totalEscrowed; // round deposits and stage pay held
    uint256 internal _totalPools; // round reward pools not yet paid
    uint256 internal _treasury;
    uint256 internal _totalBurned;

    // registry
    mapping(address => Participant) internal _participants;
    /// @notice Whether governance approved `who` to register with ROLE_COORDINATOR.
    mapping(address => bool) public coordinatorApproved;

    // staking
    mapping(address => StakeInfo) internal _stakes;

    // datasets
    mapping(bytes32 => Dataset) internal _datasets;
    /// @notice Cumulative rewards paid for accepted updates that used a dataset.
    mapping(bytes32 => uint256) public rewardsByDataset;
    /// @notice Cumulative amount clawed back from a dataset's owner by unlearning.
    mapping(bytes32 => uint256) public clawedBackByDataset;

    // rounds
    uint64 internal _roundCount;
    mapping(uint64 => Round) internal _rounds;
    mapping(uint64 => mapping(uint32 => Update)) internal _updates;
    mapping(uint64 => mapping(address => uint32)) internal _updateIndexPlusOne;
    mapping(uint64 => mapping(uint32 => ValidatorEntry)) internal _validators;
    mapping(uint64 => mapping(address => uint32)) internal _validatorIndexPlusOne;

    // cohorts: each coordinator's roster (the clients its rounds sample from, in index order,
    // fixed from its first round on) and its beacon (the seed of its next cohort)
    mapping(address => uint32) internal _rosterSize;
    mapping(address => mapping(address => uint32)) internal _rosterIndexPlusOne;
    mapping(address => bool) internal _rosterFixed;
    mapping(address => bytes32) internal _beacon;
    /// @dev round => word => bits: bit i of word w is roster index 256 * w + i.
    mapping(uint64 => mapping(uint256 => uint256)) internal _sampled;

    // unlearning
    uint64 internal _requestCount;
    mapping(uint64 => UnlearningRequest) internal _requests;
    /// @dev dataset => its request that is not verified yet (0: none).
    mapping(bytes32 => uint64) internal _openRequest;
    /// @dev Bit m: unlearning method m is known; in _exactMethods: it is exact.
    uint256 internal _methods;
    uint256 internal _exactMethods;

    // anchor
    uint64 internal _anchorSize;
    uint64 internal _anchorAt;
    bytes32 internal _anchorRoot;

    // stage servers
    StageParams internal _stageParams;
    mapping(address => StageServer) internal _stageServers;
    /// @dev server => period => escrow.
    mapping(address => mapping(uint64 => StageEscrow)) internal _stageEscrows;
    /// @dev server => period => payer => held for it (0 once refunded).
    mapping(address => mapping(uint64 => mapping(address => uint256))) internal _stagePaid;
    /// @dev claim id => its attesters, in order.
    mapping(bytes32 => address[]) internal _stageClaims;

    // dataset roots: the first owner that committed a Merkle root (appended after every
    // earlier variable, so that a deployment's layout only grows)
    mapping(bytes32 => address) internal _rootOwner;

    // per-run governance (runs are named by their coordinator)
    mapping(address => GovParams) internal _govParams;
    mapping(address => uint256) internal _govBonded; // run => bonded stake
    mapping(address => mapping(address => uint256)) internal _govBond; // run => member => bond
    /// @dev run => member => the run's proposal count at the member's last bond increase: the
    ///      member votes on proposals created after it only.
    mapping(address => mapping(address => uint64)) internal _govBondEpoch;
    /// @dev run => member => until when its bond is locked (the end of the last vote it cast).
    mapping(address => mapping(address => uint64)) internal _govLockedUntil;
    mapping(address => uint64) internal _proposalCount;
    mapping(address => mapping(uint64 => Proposal)) internal _proposals;
    /// @dev run => proposal => voter => 1 for, 2 against (0: no vote).
    mapping(address => mapping(uint64 => mapping(address => uint8))) internal _votes;
    mapping(address => mapping(address => bool)) internal _govAdmittedClient;
    mapping(address => mapping(bytes32 => bool)) internal _govAdmittedDataset;
    /// @dev The run whose governance admitted a dataset first (its unlearning needs that
    ///      run's approval).
    mapping(bytes32 => address) internal _datasetRun;
    mapping(uint64 => bool) internal _unlearningApproved;

    // data market
    mapping(bytes32 => Listing) internal _listings;
    mapping(bytes32 => mapping(bytes32 => bool)) internal _recipeAllowed;
    mapping(address => MarketFees) internal _marketFees;
    mapping(uint64 => bytes32) internal _roundRecipe;
    mapping(address => uint256) internal _royaltyFund; // run => sponsors' funds
    mapping(uint64 => mapping(bytes32 => bool)) internal _royaltyPaid; // round => dataset
    mapping(bytes32 => uint256) internal _royaltiesByDataset;

    // ------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------

    event GovernanceChanged(address indexed previous, address indexed next);
    event ParamsUpdated(Params params);

    event Minted(address indexed to, uint256 amount);
    event Transfer(address indexed from, address indexed to, uint256 amount);
    event TreasuryFunded(address indexed from, uint256 amount);
    event TreasuryBurned(address indexed by, uint256 amount);

    event CoordinatorApproved(address indexed who);
    event Registered(address indexed who, uint8 roles, bytes32 keyHash);

    event Staked(address indexed who, uint256 amount);
    event UnstakeRequested(address indexed who, uint256 amount, uint64 unlockAt);
    event Withdrawn(address indexed who, uint256 amount);

    event DatasetCommitted(
        bytes32 indexed id, address indexed owner, bytes32 merkleRoot, bytes32 manifestHash, uint64 size
    );

    event RoundOpened(
        uint64 indexed roundId,
        address indexed coordinator,
        bytes32 globalModelHash,
        uint256 rewardPool,
        bool fromTreasury
    );
    event RosterExtended(address indexed coordinator, uint32 size, bytes32 beacon);
    event CohortSampled(uint64 indexed roundId, bytes32 seed, uint32 size);
    event BeaconAdvanced(address indexed coordinator, uint64 indexed roundId, bytes32 beacon);
    event UpdateSubmitted(
        uint64 indexed roundId,
        uint32 index,
        address indexed client,
        bytes32 blobHash,
        bytes32 datasetId,
        uint64 numSamples,
        uint256 deposit
    );
    event SubmissionsClosed(uint64 indexed roundId, uint32 numUpdates);
    event ScoresCommitted(uint64 indexed roundId, address indexed validator, bytes32 commitment, uint256 weight);
    event CommitsClosed(uint64 indexed roundId, uint32 numValidators);
    event ScoresRevealed(uint64 indexed roundId, address indexed validator);
    event RevealsClosed(uint64 indexed roundId, uint32 numRevealed);
    event UpdateAccepted(uint64 indexed roundId, uint32 index, address indexed client, int64 consensusScore);
    event UpdateRejected(uint64 indexed roundId, uint32 index, address indexed client, int64 consensusScore);
    event RoundTallied(uint64 indexed roundId, uint32 acceptedCount, bytes32 acceptedSetHash, uint256 sumAcceptedScores);
    event RoundFinalized(uint64 indexed roundId, bytes32 aggregateHash, bytes32 acceptedSetHash, uint32 acceptedCount);
    event Refunded(uint64 indexed roundId, address indexed who, uint256 amount);
    event DepositForfeited(uint64 indexed roundId, address indexed who, uint256 amount);
    event Rewarded(uint64 indexed roundId, address indexed who, uint256 amount);
    event Slashed(uint64 indexed roundId, address indexed who, uint256 amount, SlashReason reason);
    event ValidatorSettled(uint64 indexed roundId, address indexed validator, bool revealed, uint32 agreements);
    event RoundSettled(uint64 indexed roundId, uint256 paid, uint256 toTreasury);

    event UnlearningMethodAdded(uint8 indexed method, bool exact);
    event UnlearningRequested(
        uint64 indexed requestId,
        bytes32 indexed datasetId,
        address indexed requester,
        bytes32 reasonHash,
        bytes32 forgetSetHash
    );
    event UnlearningExecuted(
        uint64 indexed requestId,
        bytes32 indexed datasetId,
        bytes32 resultModelHash,
        uint8 method,
        address executor,
        bytes32 evidenceHash
    );
    event Clawback(uint64 indexed requestId, address indexed owner, uint256 amount);
    event UnlearningVerified(
        uint64 indexed requestId, bytes32 evidenceHash, UnlearningEvidence evidence, address indexed verifier
    );
    event UnlearningRejected(
        uint64 indexed requestId, bytes32 evidenceHash, bytes32 reasonHash, address indexed verifier
    );
    event UnlearningBlobsDeleted(uint64 indexed requestId, bytes32 manifestHash, address indexed by);

    event Anchored(uint64 size, bytes32 root, address indexed by);

    event StageParamsUpdated(StageParams params);
    event StageRegistered(address indexed server, bytes32 indexed modelHash, uint32 firstLayer, uint32 endLayer);
    event StagePaid(address indexed server, uint64 indexed period, address indexed payer, uint64 tokens, uint256 amount);
    event StageReleased(address indexed server, uint64 indexed period, uint256 amount, uint64 tokens);
    event StageRefunded(address indexed server, uint64 indexed period, address indexed payer, uint256 amount);
    event StageFraudAttested(
        address indexed server,
        bytes32 indexed claimId,
        address indexed verifier,
        uint64 period,
        bytes32 callDigest,
        bytes32 committedRow,
        bytes32 recomputedRow,
        uint256 count
    );
    event StageSlashed(address indexed server, bytes32 indexed claimId, uint256 amount, uint256 toAttesters);
    event StageAttesterRewarded(address indexed server, address indexed verifier, uint256 amount);

    event RunGovernanceEnabled(address indexed run, GovParams params, uint32 foundingDatasets);
    event GovBonded(address indexed run, address indexed member, uint256 amount, uint256 bond);
    event GovUnbonded(address indexed run, address indexed member, uint256 amount, uint256 bond);
    event Proposed(
        address indexed run,
        uint64 indexed proposalId,
        address indexed proposer,
        uint8 kind,
        bytes32 target,
        bytes32 payloadHash,
        uint256 snapshotTotal
    );
    event Voted(address indexed run, uint64 indexed proposalId, address indexed voter, bool support, uint256 weight);
    event ProposalExecuted(address indexed run, uint64 indexed proposalId, uint8 kind, bytes32 target, bytes32 payloadHash);
    event ClientAdmitted(address indexed run, address indexed client, uint64 proposalId);
    event DatasetAdmitted(address indexed run, bytes32 indexed datasetId, uint64 proposalId);
    event UnlearningApproved(address indexed run, uint64 indexed requestId, uint64 proposalId);

    event DatasetListed(bytes32 indexed datasetId, address indexed owner, uint256 pricePerRound);
    event DatasetDelisted(bytes32 indexed datasetId, address indexed owner);
    event RecipeAllowed(bytes32 indexed datasetId, bytes32 indexed recipe, bool allowed);
    event MarketFeesSet(address indexed run, uint16 coordinatorBps, uint16 treasuryBps);
    event RoundRecipeSet(uint64 indexed roundId, address indexed run, bytes32 recipe);
    event RoundRefused(uint64 indexed roundId, bytes32 indexed datasetId, address indexed owner, bytes32 recipe);
    event RoyaltyFunded(address indexed run, address indexed sponsor, uint256 amount);
    event RoyaltyPaid(
        uint64 indexed roundId,
        bytes32 indexed datasetId,
        address indexed owner,
        uint256 toOwner,
        uint256 toCoordinator,
        uint256 toTreasury
    );

    // ------------------------------------------------------------------
    // Errors
    // ------------------------------------------------------------------

    error NotGovernance(address caller);
    error ZeroAddress();
    error ZeroAmount();
    error EmptyBatch();
    error InvalidParam(uint8 field);
    error MulDivOverflow();
    error SupplyCapExceeded(uint256 minted, uint256 amount, uint256 cap);

    error InsufficientBalance(address who, uint256 have, uint256 need);
    error InsufficientTreasury(uint256 have, uint256 need);
    error InsufficientStake(address who, uint256 have, uint256 need);
    error NothingToWithdraw(address who);
    error StillUnbonding(address who, uint64 unlockAt, uint64 nowTs);

    error InvalidRoles(uint8 roles);
    error ZeroKeyHash();
    error AlreadyRegistered(address who);
    error NotRegistered(address who);
    error CoordinatorNotApproved(address who);
    error MissingRole(address who, uint8 role);
    error NotAuthorized(address who);

    error DatasetExists(bytes32 id);
    error DatasetRootTaken(bytes32 merkleRoot, address owner);
    error SamplesAboveDataset(bytes32 datasetId, uint64 numSamples, uint64 size);
    error UnknownDataset(bytes32 id);
    error NotDatasetOwner(bytes32 id, address who);
    error DatasetIsForgotten(bytes32 id);

    error UnknownRound(uint64 round);
    error WrongPhase(uint64 round, uint8 phase, uint8 expected);
    error NotRoundCoordinator(uint64 round, address who);
    error AlreadySubmitted(uint64 round, address client);
    error TooManyUpdates(uint64 round, uint16 max);
    error TooManyValidators(uint64 round, uint16 max);
    error UnknownUpdate(uint64 round, uint32 index);
    error UnknownValidator(uint64 round, uint32 index);
    error ZeroCommitment();
    error AlreadyCommitted(uint64 round, address validator);
    error NotCommitted(uint64 round, address validator);
    error AlreadyRevealed(uint64 round, address validator);
    error RevealWindowClosed(uint64 round);
    error BadScoresLength(uint64 round, uint256 have, uint256 need);
    error BadReveal(uint64 round, address validator);
    error RevealsStillOpen(uint64 round, uint32 revealed, uint32 committed);
    error AcceptedSetMismatch(bytes32 expected, bytes32 got);
    error RosterFixed(address coordinator);
    error RosterFull(uint32 max);
    error AlreadyInRoster(address client);
    error EmptyRoster(address coordinator);
    error ZeroCohort();
    error NotSampled(uint64 round, address client);

    error UnknownRequest(uint64 requestId);
    error WrongRequestPhase(uint64 requestId, uint8 phase, uint8 expected);
    error InvalidMethod(uint8 method);
    error UnlearningPending(bytes32 datasetId, uint64 requestId);
    error VerifierIsExecutor(uint64 requestId, address who);
    error EvidenceMismatch(uint64 requestId, bytes32 recorded, bytes32 got);
    error BlobsAlreadyDeleted(uint64 requestId);

    error AnchorNotGrowing(uint64 latest, uint64 got);

    error InvalidStageParam(uint8 field);
    error InvalidLayers(uint32 firstLayer, uint32 endLayer);
    error StageExists(address server);
    error UnknownStage(address server);
    error StageInactive(address server);
    error StageNotSlashed(address server);
    error EscrowReleased(address server, uint64 period);
    error EscrowLocked(address server, uint64 period, uint64 releaseAt, uint64 nowTs);
    error NothingEscrowed(address server, uint64 period, address payer);
    error NotAMismatch();
    error SelfAttestation(address server);
    error NotAStageVerifier(address who, address server);
    error AlreadyAttested(bytes32 claimId, address verifier);

    error InvalidGovParam(uint8 field);
    error GovernanceEnabled(address run);
    error NoGovernance(address run);
    error NotAMember(address run, address who);
    error BondLocked(address run, address who, uint64 until);
    error NoBond(address run, address who);
    error InvalidProposal(uint8 kind, bytes32 target);
    error UnknownProposal(address run, uint64 proposalId);
    error VotingClosed(address run, uint64 proposalId, uint64 votingEnds);
    error VotingOpen(address run, uint64 proposalId, uint64 votingEnds);
    error BondAfterProposal(address run, uint64 proposalId, address who);
    error AlreadyVoted(address run, uint64 proposalId, address who);
    error Timelocked(address run, uint64 proposalId, uint64 executableAt);
    error ProposalRejected(address run, uint64 proposalId);
    error AlreadyExecuted(address run, uint64 proposalId);
    error NotAdmitted(address run, bytes32 what);
    error UnlearningNotApproved(uint64 requestId, address run);

    error NotListed(bytes32 datasetId);
    error InvalidFees(uint16 coordinatorBps, uint16 treasuryBps);
    error PriceAboveSupply(uint256 price, uint256 cap);
    error RecipeSet(uint64 roundId);
    error RecipeNotAllowed(bytes32 datasetId, bytes32 recipe);
    error RecipeAllowedThere(bytes32 datasetId, bytes32 recipe);
    error NotTrainedOn(uint64 roundId, uint32 index);
    error RoyaltyAlreadyPaid(uint64 roundId, bytes32 datasetId);
    error InsufficientRoyaltyFund(address run, uint256 have, uint256 need);

    // ------------------------------------------------------------------
    // Modifiers and access helpers
    // ------------------------------------------------------------------

    modifier onlyGovernance() {
        if (msg.sender != governance) revert NotGovernance(msg.sender);
        _;
    }

    /// @dev Reverts NotRegistered / MissingRole unless `who` holds `role`.
    function _requireRole(address who, uint8 role) internal view {
        uint8 roles = _participants[who].roles;
        if (roles == 0) revert NotRegistered(who);
        if (roles & role == 0) revert MissingRole(who, role);
    }

    function _hasRole(address who, uint8 role) internal view returns (bool) {
        return _participants[who].roles & role != 0;
    }

    // ------------------------------------------------------------------
    // Internal token movements (each keeps the running totals exact)
    // ------------------------------------------------------------------

    function _creditBalance(address who, uint256 amount) internal {
        _balances[who] += amount;
        _totalBalances += amount;
    }

    function _debitBalance(address who, uint256 amount) internal {
        uint256 have = _balances[who];
        if (have < amount) revert InsufficientBalance(who, have, amount);
        unchecked {
            _balances[who] = have - amount;
            _totalBalances -= amount;
        }
    }

    /// @dev Removes up to `amount` from `who`'s stake, active first, then
    ///      unbonding, and moves it to the treasury. Returns what was taken.
    function _takeStakeToTreasury(address who, uint256 amount) internal returns (uint256 taken) {
        StakeInfo storage s = _stakes[who];
        uint256 active = s.active;
        uint256 unbonding = s.unbonding;
        uint256 fromActive = amount < active ? amount : active;
        uint256 rest = amount - fromActive;
        uint256 fromUnbonding = rest < unbonding ? rest : unbonding;
        taken = fromActive + fromUnbonding;
        if (taken == 0) return 0;
        if (fromActive != 0) s.active = active - fromActive;
        if (fromUnbonding != 0) s.unbonding = unbonding - fromUnbonding;
        _totalStaked -= taken;
        _treasury += taken;
    }

    /// @dev Slashes `bps` of `who`'s total stake (active + unbonding) to the
    ///      treasury, active first. Emits Slashed when something was taken.
    function _slash(uint64 roundId, address who, uint16 bps, SlashReason reason) internal returns (uint256 taken) {
        StakeInfo storage s = _stakes[who];
        uint256 amount = _mulDiv(s.active + s.unbonding, bps, BPS);
        taken = _takeStakeToTreasury(who, amount);
        if (taken != 0) emit Slashed(roundId, who, taken, reason);
    }

    /// @dev floor(x * y / d) with a 512-bit intermediate product; reverts if
    ///      the result does not fit in 256 bits or d == 0.
    function _mulDiv(uint256 x, uint256 y, uint256 d) internal pure returns (uint256 result) {
        unchecked {
            uint256 prod0;
            uint256 prod1;
            assembly ("memory-safe") {
                let mm := mulmod(x, y, not(0))
                prod0 := mul(x, y)
                prod1 := sub(sub(mm, prod0), lt(mm, prod0))
            }
            if (prod1 == 0) {
                if (d == 0) revert MulDivOverflow();
                return prod0 / d;
            }
            if (d <= prod1) revert MulDivOverflow();
            uint256 remainder;
            assembly ("memory-safe") {
                remainder := mulmod(x, y, d)
                prod1 := sub(prod1, gt(remainder, prod0))
                prod0 := sub(prod0, remainder)
            }
            uint256 twos = d & (~d + 1);
            assembly ("memory-safe") {
                d := div(d, twos)
                prod0 := div(prod0, twos)
                twos := add(div(sub(0, twos), twos), 1)
            }
            prod0 |= prod1 * twos;
            uint256 inverse = (3 * d) ^ 2;
            inverse *= 2 - d * inverse;
            inverse *= 2 - d * inverse;
            inverse *= 2 - d * inverse;
            inverse *= 2 - d * inverse;
            inverse *= 2 - d * inverse;
            inverse *= 2 - d * inverse;
            result = prod0 * inverse;
        }
    }
}
