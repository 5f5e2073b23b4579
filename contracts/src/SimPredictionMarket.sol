// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ISimClassifier} from "./SimClassifier.sol";

/// @title PredictionMarket
/// @notice The prediction-market incentive of "Sharing Updatable Models on
///         Blockchain" (0xDeCA10B, `PredictionMarket` with
///         reset_model_during_reward_phase), over an internal token:
///         - set-up: the initiator (deployer) commits the hidden test set as the
///           keccak of each of its pieces and funds a bounty;
///         - participation: anyone adds a labelled sample paying the deposit
///           max(1, floor(costWeight * 60 / floor(sqrt(dt)))) whole tokens (the
///           Deposit-Refund-Take cost, dt = seconds since the last addition,
///           dt = 0 refused); the model trains on it;
///         - endMarket (initiator), then reveal: each piece in order, checked
///           against its hash and stored;
///         - reward rounds (`rounds` of them): startRound takes a fresh copy of
///           the initial model (its stateHash must equal the one recorded at
///           deployment); process replays the contributions in order on it,
///           skipping those that have lost their deposit. A contribution that
///           raises the number of revealed test samples predicted right by d > 0
///           scores d in this round (the test set is evaluated again only when
///           the model's update reports a change); one that lowers it forfeits its whole
///           deposit to the bounty pool and is left out of later rounds. When
///           round r of R closes, floor(pool / (R - r + 1)) of the pool is its
///           pot (none if nobody scored), split among the round's positive
///           scores in proportion (rounded down); after the last round what is
///           left of the pool returns to the initiator.
///         - claim: each contributor gets what is left of its deposit plus its
///           shares of the pots.
/// @dev Amounts are uint256 base units, TOKEN_UNIT per whole token. Invariant:
///      totalMinted == sum of balanceOf + escrowed (escrowed holds the deposits,
///      the pool, and the pots until claimed; rounding dust stays there).
///      A test piece is a concatenation of samples, each
///      [label: 1 byte][n: uint16 big-endian][n features: uint16 big-endian].
contract PredictionMarket {
    /// @notice Base units per whole token.
    uint256 public constant TOKEN_UNIT = 1e18;
    /// @notice Fixed-point scale of costWeight (1.0 == 1e6).
    uint256 public constant COST_WEIGHT_SCALE = 1e6;

    enum Phase {
        Participation,
        Reveal,
        Reward,
        Done
    }

    struct Contribution {
        address sender;
        uint8 label;
        bool claimed;
        uint256 deposit;
        uint256 balance;
        bytes32 dataHash;
    }

    /// @notice The classifier trained during participation.
    ISimClassifier public immutable model;
    /// @notice The deployer: mints balances, funds the bounty, ends the market.
    address public immutable initiator;
    /// @notice Scaled by COST_WEIGHT_SCALE.
    uint256 public immutable costWeight;
    /// @notice Number of reward rounds.
    uint8 public immutable rounds;
    /// @notice The model's stateHash at deployment: every round starts from it.
    bytes32 public immutable initialModelHash;

    /// @notice Current phase.
    Phase public phase;
    /// @notice Time of the last accepted addition (the deployment at first).
    uint64 public lastUpdateTime;
    /// @notice Free token balance per address.
    mapping(address => uint256) public balanceOf;
    /// @notice Ever minted.
    uint256 public totalMinted;
    /// @notice Deposits, pool and unclaimed pots.
    uint256 public escrowed;
    /// @notice The bounty pool not yet assigned to a round.
    uint256 public pool;

    bytes32[] internal testHashes;
    /// @notice Pieces revealed so far.
    uint256 public revealed;
    bytes[] internal testFeatures;
    uint8[] internal testLabels;

    Contribution[] internal contributions;

    /// @notice The model of the current reward round.
    ISimClassifier public rewardModel;
    /// @notice Current reward round (1-based; 0 before the first).
    uint8 public round;
    /// @notice Whether a round is being processed.
    bool public roundOpen;
    /// @notice Next contribution to process in the open round.
    uint256 public nextIndex;
    /// @notice Revealed test samples the round's model predicts right now.
    uint256 public prevCorrect;
    /// @notice Pot of each closed round.
    mapping(uint256 => uint256) public roundPot;
    /// @notice Sum of the positive scores of each round.
    mapping(uint256 => uint256) public roundPositive;
    mapping(uint256 => uint256) internal scores;

    event Funded(address indexed to, uint256 amount);
    event BountyAdded(uint256 amount);
    event DataAdded(uint256 indexed id, address indexed sender, uint8 label, uint256 cost);
    event Revealed(uint256 indexed piece, uint256 samples);
    event Processed(uint256 indexed round, uint256 indexed id, int256 delta);
    event RoundClosed(uint256 indexed round, uint256 pot, uint256 positive);
    event Claimed(uint256 indexed id, address indexed sender, uint256 amount);

    error NotInitiator(address caller);
    error ZeroAddress();
    error BadRounds(uint8 rounds);
    error NoTestSet();
    error WrongPhase(Phase phase);
    error TooSoon(uint64 nowTs, uint64 lastUpdateTime);
    error DepositTooLow(uint256 offered, uint256 cost);
    error InsufficientBalance(address who, uint256 have, uint256 need);
    error WrongPiece(uint256 piece, uint256 expected);
    error PieceMismatch(uint256 piece);
    error BadPiece(uint256 piece, uint256 offset);
    error RoundOpen(uint8 round);
    error NoRoundOpen();
    error ModelMismatch(bytes32 expected, bytes32 got);
    error UnknownContribution(uint256 id);
    error DataMismatch(uint256 id);
    error NotSubmitter(uint256 id, address who);
    error AlreadyClaimed(uint256 id, address who);

    modifier onlyInitiator() {
        if (msg.sender != initiator) revert NotInitiator(msg.sender);
        _;
    }

    modifier inPhase(Phase p) {
        if (phase != p) revert WrongPhase(phase);
        _;
    }

    constructor(ISimClassifier model_, uint256 costWeight_, uint8 rounds_, bytes32[] memory testHashes_) {
        if (address(model_) == address(0)) revert ZeroAddress();
        if (rounds_ == 0) revert BadRounds(rounds_);
        if (testHashes_.length == 0) revert NoTestSet();
        model = model_;
        initiator = msg.sender;
        costWeight = costWeight_;
        rounds = rounds_;
        initialModelHash = model_.stateHash();
        testHashes = testHashes_;
        lastUpdateTime = uint64(block.timestamp);
    }

    /// @notice Mints `amount` base units to `to` (the simulator's starting balances).
    function fund(address to, uint256 amount) external onlyInitiator {
        if (to == address(0)) revert ZeroAddress();
        balanceOf[to] += amount;
        totalMinted += amount;
        emit Funded(to, amount);
    }

    /// @notice Mints `amount` base units into the bounty pool.
    function addBounty(uint256 amount) external onlyInitiator inPhase(Phase.Participation) {
        pool += amount;
        escrowed += amount;
        totalMinted += amount;
        emit BountyAdded(amount);
    }

    /// @notice The deposit addData charges now, in base units.
    function addDataCost() public view returns (uint256) {
        uint64 nowTs = uint64(block.timestamp);
        if (nowTs <= lastUpdateTime) revert TooSoon(nowTs, lastUpdateTime);
        uint256 coins = (costWeight * 60) / (_sqrt(nowTs - lastUpdateTime) * COST_WEIGHT_SCALE);
        if (coins == 0) coins = 1;
        return coins * TOKEN_UNIT;
    }

    /// @notice Adds one labelled sample, paying the current cost (at most `maxDeposit`),
    ///         and trains the model with it. Returns its id and the deposit.
    function addData(bytes calldata features, uint8 label, uint256 maxDeposit)
        external
        inPhase(Phase.Participation)
        returns (uint256 id, uint256 cost)
    {
        cost = addDataCost();
        if (cost > maxDeposit) revert DepositTooLow(maxDeposit, cost);
        uint256 have = balanceOf[msg.sender];
        if (have < cost) revert InsufficientBalance(msg.sender, have, cost);
        balanceOf[msg.sender] = have - cost;
        escrowed += cost;
        lastUpdateTime = uint64(block.timestamp);
        id = contributions.length;
        contributions.push(
            Contribution({
                sender: msg.sender,
                label: label,
                claimed: false,
                deposit: cost,
                balance: cost,
                dataHash: keccak256(features)
            })
        );
        model.update(features, label);
        emit DataAdded(id, msg.sender, label, cost);
    }

    /// @notice Ends participation; the test set is revealed next.
    function endMarket() external onlyInitiator inPhase(Phase.Participation) {
        phase = Phase.Reveal;
    }

    /// @notice Reveals test piece `k` (pieces in order); the last one opens the rewards.
    function reveal(uint256 k, bytes calldata piece) external inPhase(Phase.Reveal) {
        if (k != revealed) revert WrongPiece(k, revealed);
        if (keccak256(piece) != testHashes[k]) revert PieceMismatch(k);
        uint256 p = 0;
        uint256 len = piece.length;
        uint256 count = 0;
        while (p < len) {
            if (p + 3 > len) revert BadPiece(k, p);
            uint8 label = uint8(piece[p]);
            uint256 n = uint16(bytes2(piece[p + 1:p + 3]));
            if (label > 1 || p + 3 + 2 * n > len) revert BadPiece(k, p);
            testLabels.push(label);
            testFeatures.push(piece[p + 3:p + 3 + 2 * n]);
            p += 3 + 2 * n;
            ++count;
        }
        revealed = k + 1;
        if (revealed == testHashes.length) phase = Phase.Reward;
        emit Revealed(k, count);
    }

    /// @notice Opens the next reward round on `fresh`, a copy of the initial model
    ///         owned by this contract.
    function startRound(ISimClassifier fresh) external inPhase(Phase.Reward) {
        if (roundOpen) revert RoundOpen(round);
        bytes32 h = fresh.stateHash();
        if (h != initialModelHash) revert ModelMismatch(initialModelHash, h);
        rewardModel = fresh;
        round += 1;
        nextIndex = 0;
        roundOpen = true;
        prevCorrect = _correct();
        if (contributions.length == 0) _closeRound();
    }

    /// @notice Replays the next contribution of the open round (its features passed
    ///         again and checked against the stored hash); returns the change in test
    ///         samples predicted right (0 for a contribution left out).
    function process(bytes calldata features) external inPhase(Phase.Reward) returns (int256 delta) {
        if (!roundOpen) revert NoRoundOpen();
        uint256 id = nextIndex;
        Contribution storage c = contributions[id];
        if (c.dataHash != keccak256(features)) revert DataMismatch(id);
        if (c.balance > 0) {
            uint256 prev = prevCorrect;
            uint256 correct = rewardModel.update(features, c.label) ? _correct() : prev;
            if (correct > prev) {
                scores[_key(round, id)] = correct - prev;
                roundPositive[round] += correct - prev;
            } else if (correct < prev) {
                pool += c.balance;
                c.balance = 0;
            }
            prevCorrect = correct;
            delta = int256(correct) - int256(prev);
        }
        emit Processed(round, id, delta);
        nextIndex = id + 1;
        if (id + 1 == contributions.length) _closeRound();
    }

    /// @notice Contribution `id`'s remaining deposit plus its shares of the pots, to
    ///         its submitter, once the last round has closed.
    function claim(uint256 id) external inPhase(Phase.Done) returns (uint256 amount) {
        if (id >= contributions.length) revert UnknownContribution(id);
        Contribution storage c = contributions[id];
        if (c.sender != msg.sender) revert NotSubmitter(id, msg.sender);
        if (c.claimed) revert AlreadyClaimed(id, msg.sender);
        amount = claimable(id);
        c.claimed = true;
        c.balance = 0;
        escrowed -= amount;
        balanceOf[msg.sender] += amount;
        emit Claimed(id, msg.sender, amount);
    }

    /// @notice What claim(id) pays (after the last round).
    function claimable(uint256 id) public view returns (uint256 amount) {
        Contribution storage c = contributions[id];
        if (c.claimed) return 0;
        amount = c.balance;
        for (uint256 r = 1; r <= round; ++r) {
            uint256 s = scores[_key(r, id)];
            if (s > 0) amount += (roundPot[r] * s) / roundPositive[r];
        }
    }

    /// @notice Score of contribution `id` in round `r`.
    function score(uint256 r, uint256 id) external view returns (uint256) {
        return scores[_key(r, id)];
    }

    /// @notice What is left of contribution `id`'s deposit.
    function depositLeft(uint256 id) external view returns (uint256) {
        if (id >= contributions.length) revert UnknownContribution(id);
        return contributions[id].balance;
    }

    /// @notice Number of contributions added so far.
    function contributionCount() external view returns (uint256) {
        return contributions.length;
    }

    /// @notice Number of revealed test samples.
    function testSize() external view returns (uint256) {
        return testLabels.length;
    }

    function _closeRound() private {
        uint8 r = round;
        roundOpen = false;
        uint256 pot = 0;
        if (roundPositive[r] > 0) {
            pot = pool / (uint256(rounds) - r + 1);
            pool -= pot;
        }
        roundPot[r] = pot;
        emit RoundClosed(r, pot, roundPositive[r]);
        if (r == rounds) {
            phase = Phase.Done;
            uint256 left = pool;
            pool = 0;
            escrowed -= left;
            balanceOf[initiator] += left;
        }
    }

    function _correct() private view returns (uint256 n) {
        ISimClassifier m = rewardModel;
        uint256 len = testLabels.length;
        for (uint256 j = 0; j < len; ++j) {
            if (m.predict(testFeatures[j]) == testLabels[j]) ++n;
        }
    }

    function _key(uint256 r, uint256 id) private pure returns (uint256) {
        return (r << 128) | id;
    }

    /// @dev floor(sqrt(x)).
    function _sqrt(uint256 x) private pure returns (uint256 y) {
        if (x == 0) return 0;
        y = x;
        uint256 z = (x + 1) / 2;
        while (z < y) {
            y = z;
            z = (x / z + z) / 2;
        }
    }
}
