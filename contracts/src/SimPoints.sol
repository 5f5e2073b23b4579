// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ISimClassifier} from "./SimClassifier.sol";

/// @title Points
/// @notice The Points incentive of "Sharing Updatable Models on Blockchain"
///         (0xDeCA10B, `Points64`): no money changes hands; a contributor earns one
///         point for each of its contributions that the model still agrees with
///         after a wait.
///         - addData: anyone adds a labelled sample for free; the model trains on
///           it. (No cost, so no rate limit either: several additions may share
///           a timestamp.)
///         - refund (claim a point): the submitter, once per contribution, more
///           than `refundWait` after adding, if the model now predicts the
///           submitted label, earns one point.
///         There is no take and no take-all: nothing is escrowed.
/// @dev The features of a contribution are not stored, only their keccak, checked
///      when the point is claimed.
contract Points {
    struct Contribution {
        address sender;
        uint64 addedAt;
        uint8 label;
        bool claimed;
        bytes32 dataHash;
    }

    /// @notice The classifier trained with every contribution.
    ISimClassifier public immutable model;
    /// @notice Seconds after which the submitter may claim a point (strictly more).
    uint64 public immutable refundWait;

    /// @notice Points per address (= its good contributions).
    mapping(address => uint64) public pointsOf;
    /// @notice Points of everyone.
    uint64 public totalPoints;

    Contribution[] internal contributions;

    event DataAdded(uint256 indexed id, address indexed sender, uint8 label);
    event PointEarned(uint256 indexed id, address indexed sender);

    error ZeroAddress();
    error UnknownContribution(uint256 id);
    error DataMismatch(uint256 id);
    error NotSubmitter(uint256 id, address who);
    error AlreadyClaimed(uint256 id, address who);
    error TooEarly(uint256 id, uint64 age, uint64 wait);
    error ModelDisagrees(uint256 id);

    constructor(ISimClassifier model_, uint64 refundWait_) {
        if (address(model_) == address(0)) revert ZeroAddress();
        model = model_;
        refundWait = refundWait_;
    }

    /// @notice Adds one labelled sample and trains the model with it; returns its id.
    function addData(bytes calldata features, uint8 label) external returns (uint256 id) {
        id = contributions.length;
        contributions.push(
            Contribution({
                sender: msg.sender,
                addedAt: uint64(block.timestamp),
                label: label,
                claimed: false,
                dataHash: keccak256(features)
            })
        );
        model.update(features, label);
        emit DataAdded(id, msg.sender, label);
    }

    /// @notice The submitter claims a point for contribution `id` (whose features are
    ///         passed again and checked against the stored hash); returns the
    ///         submitter's points after it.
    function refund(uint256 id, bytes calldata features) external returns (uint64 points) {
        if (id >= contributions.length) revert UnknownContribution(id);
        Contribution storage c = contributions[id];
        if (c.dataHash != keccak256(features)) revert DataMismatch(id);
        if (c.sender != msg.sender) revert NotSubmitter(id, msg.sender);
        if (c.claimed) revert AlreadyClaimed(id, msg.sender);
        uint64 age = uint64(block.timestamp) - c.addedAt;
        if (age <= refundWait) revert TooEarly(id, age, refundWait);
        if (model.predict(features) != c.label) revert ModelDisagrees(id);
        c.claimed = true;
        points = pointsOf[msg.sender] + 1;
        pointsOf[msg.sender] = points;
        totalPoints += 1;
        emit PointEarned(id, msg.sender);
    }

    /// @notice Number of contributions added so far.
    function contributionCount() external view returns (uint256) {
        return contributions.length;
    }
}
