// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ISimClassifier} from "./SimClassifier.sol";

/// @title DepositRefundTake
/// @notice The Deposit, Refund and Take incentive of "Sharing Updatable Models on
///         Blockchain" (0xDeCA10B), with the rules and scale of its Python
///         simulator, over an internal token:
///         - addData: the sender pays cost = max(1, floor(costWeight * 60 /
///           floor(sqrt(dt)))) whole tokens, dt = seconds since the last accepted
///           addition by anyone (dt = 0 is rejected); the sender offers at most
///           `maxDeposit` and only the cost is charged; the model trains on the
///           sample.
///         - refund: the submitter, once, more than `refundWait` after adding,
///           if the model now predicts the submitted label, gets back all that is
///           left of the deposit and counts one good contribution.
///         - report (take): anyone else with at least one good contribution, once
///           per contribution, more than `refundWait` after it was added, if the
///           model now disagrees with its label, takes initialDeposit *
///           numGood(reporter) / totalGood (all that is left if that is 0 or
///           more than what is left).
///         - report at `anyAddressClaimWait` or later: anyone, the submitter too,
///           takes all that is left.
/// @dev Amounts are uint256 base units, TOKEN_UNIT per whole token. costWeight is
///      scaled by COST_WEIGHT_SCALE. Invariant: totalMinted == sum of balanceOf +
///      escrowed, and escrowed == sum of the contributions' claimable amounts.
contract DepositRefundTake {
    /// @notice Base units per whole token.
    uint256 public constant TOKEN_UNIT = 1e18;
    /// @notice Fixed-point scale of costWeight (1.0 == 1e6).
    uint256 public constant COST_WEIGHT_SCALE = 1e6;
    /// @notice anyAddressClaimWait must exceed refundWait by more than this.
    uint64 public constant MIN_REFUND_WINDOW = 7 days;

    struct Contribution {
        address sender;
        uint64 addedAt;
        uint8 label;
        uint256 initialDeposit;
        uint256 claimable;
        bytes32 dataHash;
    }

    /// @notice The classifier trained with every accepted contribution.
    ISimClassifier public immutable model;
    /// @notice The deployer; the only address that may mint (fund) balances.
    address public immutable operator;
    /// @notice Scaled by COST_WEIGHT_SCALE.
    uint256 public immutable costWeight;
    /// @notice Seconds after which the submitter may ask for a refund (strictly more).
    uint64 public immutable refundWait;
    /// @notice Seconds after which anyone may take all that is left.
    uint64 public immutable anyAddressClaimWait;

    /// @notice Time of the last accepted addition (the deployment at first).
    uint64 public lastUpdateTime;
    /// @notice Good contributions (successful refunds) of everyone.
    uint64 public totalGood;
    /// @notice Good contributions per address.
    mapping(address => uint64) public numGood;
    /// @notice Free token balance per address.
    mapping(address => uint256) public balanceOf;
    /// @notice Ever minted by the operator.
    uint256 public totalMinted;
    /// @notice Deposits still claimable, summed over all contributions.
    uint256 public escrowed;
    /// @notice Whether `who` has claimed from contribution `id` (refund or take).
    mapping(uint256 => mapping(address => bool)) public claimedBy;

    Contribution[] internal contributions;

    event Funded(address indexed to, uint256 amount);
    event DataAdded(uint256 indexed id, address indexed sender, uint8 label, uint256 cost);
    event Refunded(uint256 indexed id, address indexed sender, uint256 amount);
    event Taken(uint256 indexed id, address indexed reporter, uint256 amount, bool all);

    error NotOperator(address caller);
    error ZeroAddress();
    error InvalidWindows(uint64 refundWait, uint64 anyAddressClaimWait);
    error TooSoon(uint64 nowTs, uint64 lastUpdateTime);
    error DepositTooLow(uint256 offered, uint256 cost);
    error InsufficientBalance(address who, uint256 have, uint256 need);
    error UnknownContribution(uint256 id);
    error DataMismatch(uint256 id);
    error NotSubmitter(uint256 id, address who);
    error AlreadyClaimed(uint256 id, address who);
    error NothingLeft(uint256 id);
    error TooEarly(uint256 id, uint64 age, uint64 wait);
    error ModelDisagrees(uint256 id);
    error ModelAgrees(uint256 id);
    error CannotTakeOwn(uint256 id);
    error NoGoodContributions(address who);

    constructor(ISimClassifier model_, uint256 costWeight_, uint64 refundWait_, uint64 anyAddressClaimWait_) {
        if (address(model_) == address(0)) revert ZeroAddress();
        if (uint256(anyAddressClaimWait_) <= uint256(refundWait_) + MIN_REFUND_WINDOW) {
            revert InvalidWindows(refundWait_, anyAddressClaimWait_);
        }
        model = model_;
        operator = msg.sender;
        costWeight = costWeight_;
        refundWait = refundWait_;
        anyAddressClaimWait = anyAddressClaimWait_;
        lastUpdateTime = uint64(block.timestamp);
    }

    /// @notice Mints `amount` base units to `to` (the simulator's starting balances).
    function fund(address to, uint256 amount) external {
        if (msg.sender != operator) revert NotOperator(msg.sender);
        if (to == address(0)) revert ZeroAddress();
        balanceOf[to] += amount;
        totalMinted += amount;
        emit Funded(to, amount);
    }

    /// @notice The deposit addData charges now, in base units.
    function addDataCost() public view returns (uint256) {
        uint64 nowTs = uint64(block.timestamp);
        if (nowTs <= lastUpdateTime) revert TooSoon(nowTs, lastUpdateTime);
        uint256 coins = (costWeight * 60) / (_sqrt(nowTs - lastUpdateTime) * COST_WEIGHT_SCALE);
        if (coins == 0) coins = 1;
        return coins * TOKEN_UNIT;
    }

    /// @notice Adds one labelled sample, paying the current cost (at most `maxDeposit`)
    ///         from the sender's balance, and trains the model with it. Returns the
    ///         contribution's id and the deposit charged.
    function addData(bytes calldata features, uint8 label, uint256 maxDeposit)
        external
        returns (uint256 id, uint256 cost)
    {
        cost = addDataCost();
        if (cost > maxDeposit) revert DepositTooLow(maxDeposit, cost);
        uint256 have = balanceOf[msg.sender];
        if (have < cost) revert InsufficientBalance(msg.sender, have, cost);
        balanceOf[msg.sender] = have - cost;
        escrowed += cost;
        uint64 nowTs = uint64(block.timestamp);
        lastUpdateTime = nowTs;
        id = contributions.length;
        contributions.push(
            Contribution({
                sender: msg.sender,
                addedAt: nowTs,
                label: label,
                initialDeposit: cost,
                claimable: cost,
                dataHash: keccak256(features)
            })
        );
        model.update(features, label);
        emit DataAdded(id, msg.sender, label, cost);
    }

    /// @notice The submitter's refund of contribution `id` (whose features are
    ///         passed again and checked against the stored hash).
    function refund(uint256 id, bytes calldata features) external returns (uint256 amount) {
        Contribution storage c = _contribution(id, features);
        if (c.sender != msg.sender) revert NotSubmitter(id, msg.sender);
        if (claimedBy[id][msg.sender]) revert AlreadyClaimed(id, msg.sender);
        amount = c.claimable;
        if (amount == 0) revert NothingLeft(id);
        uint64 age = uint64(block.timestamp) - c.addedAt;
        if (age <= refundWait) revert TooEarly(id, age, refundWait);
        if (model.predict(features) != c.label) revert ModelDisagrees(id);
        numGood[msg.sender] += 1;
        totalGood += 1;
        claimedBy[id][msg.sender] = true;
        c.claimable = 0;
        escrowed -= amount;
        balanceOf[msg.sender] += amount;
        emit Refunded(id, msg.sender, amount);
    }

    /// @notice Takes from contribution `id`: all that is left once it is
    ///         `anyAddressClaimWait` old, else a share if the model disagrees with it.
    function report(uint256 id, bytes calldata features) external returns (uint256 amount) {
        Contribution storage c = _contribution(id, features);
        uint256 left = c.claimable;
        if (left == 0) revert NothingLeft(id);
        uint64 age = uint64(block.timestamp) - c.addedAt;
        bool all = age >= anyAddressClaimWait;
        if (all) {
            amount = left;
        } else {
            if (c.sender == msg.sender) revert CannotTakeOwn(id);
            if (claimedBy[id][msg.sender]) revert AlreadyClaimed(id, msg.sender);
            if (age <= refundWait) revert TooEarly(id, age, refundWait);
            if (model.predict(features) == c.label) revert ModelAgrees(id);
            uint64 mine = numGood[msg.sender];
            if (mine == 0) revert NoGoodContributions(msg.sender);
            amount = (c.initialDeposit * mine) / totalGood;
            if (amount == 0 || amount > left) amount = left;
        }
        claimedBy[id][msg.sender] = true;
        c.claimable = left - amount;
        escrowed -= amount;
        balanceOf[msg.sender] += amount;
        emit Taken(id, msg.sender, amount, all);
    }

    /// @notice Contribution `id`.
    function contribution(uint256 id) external view returns (Contribution memory) {
        if (id >= contributions.length) revert UnknownContribution(id);
        return contributions[id];
    }

    /// @notice Number of contributions added so far.
    function contributionCount() external view returns (uint256) {
        return contributions.length;
    }

    function _contribution(uint256 id, bytes calldata features)
        private
        view
        returns (Contribution storage c)
    {
        if (id >= contributions.length) revert UnknownContribution(id);
        c = contributions[id];
        if (c.dataHash != keccak256(features)) revert DataMismatch(id);
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
