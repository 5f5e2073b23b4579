// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ISimClassifier} from "./SimClassifier.sol";

/// @title NearestCentroid
/// @notice A binary nearest-centroid classifier over sparse binary features
///         (scikit-learn's `NearestCentroid` with the Euclidean metric, updated
///         online: each class's centroid is the mean of its samples), in exact
///         integer arithmetic. Per class c it keeps the number of samples n_c, the
///         per-feature sums S_{c,f} (samples of class c with feature f) and
///         Q_c = sum_f S_{c,f}^2. With A_c = sum of S_{c,f} over the present
///         features, the squared distance to centroid c, less the |x| common to
///         both classes, times n_c^2, is D_c = Q_c - 2 n_c A_c; the prediction is
///         1 iff D_1 * n_0^2 < D_0 * n_1^2 (ties go to 0, as sklearn's argmin);
///         a class without samples is never predicted (0 if neither has any).
/// @dev S_{0,f} is the low 128 bits and S_{1,f} the high 128 bits of the slot
///      WEIGHTS_BASE + f, so a prediction reads one slot per present feature.
contract NearestCentroid is ISimClassifier {
    uint256 private constant WEIGHTS_BASE = 0x100000000000000000000000000000000;
    uint256 private constant LOW = type(uint128).max;

    /// @notice Number of features; every feature index is below it.
    uint32 public immutable numFeatures;
    /// @notice The only address that may load the state and train the model.
    address public owner;
    /// @notice Samples per class.
    uint256[2] public docs;
    /// @notice Sum over the features of the squared per-feature sums, per class.
    uint256[2] public sq;
    /// @notice Features loaded so far (the loading is sequential).
    uint32 public loaded;

    event OwnerChanged(address indexed previous, address indexed next);

    error NotOwner(address caller);
    error ZeroAddress();
    error BadFeature(uint256 position, uint16 feature);
    error BadFeatures(uint256 length);
    error BadLabel(uint8 label);
    error BadRange(uint256 from, uint256 count, uint32 numFeatures);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    constructor(uint32 numFeatures_) {
        if (numFeatures_ > 65_536) revert BadRange(0, numFeatures_, 65_536);
        numFeatures = numFeatures_;
        owner = msg.sender;
        emit OwnerChanged(address(0), msg.sender);
    }

    /// @notice Hands the model to `next` (the mechanism that will train it).
    function setOwner(address next) external onlyOwner {
        if (next == address(0)) revert ZeroAddress();
        emit OwnerChanged(owner, next);
        owner = next;
    }

    /// @notice Loads the per-class sample counts and the per-feature sums of features
    ///         `from ..` (packed as the slots are: class 1 in the high 128 bits), in
    ///         order: `from` must be the number of features loaded so far.
    function load(uint256 docs0, uint256 docs1, uint32 from, uint256[] calldata packed)
        external
        onlyOwner
    {
        if (from != loaded || uint256(from) + packed.length > numFeatures) {
            revert BadRange(from, packed.length, numFeatures);
        }
        docs[0] = docs0;
        docs[1] = docs1;
        uint256 q0 = sq[0];
        uint256 q1 = sq[1];
        for (uint256 i = 0; i < packed.length; ++i) {
            uint256 v = packed[i];
            q0 += (v & LOW) * (v & LOW);
            q1 += (v >> 128) * (v >> 128);
            _set(uint256(from) + i, v);
        }
        sq[0] = q0;
        sq[1] = q1;
        loaded = from + uint32(packed.length);
    }

    /// @notice The packed per-feature sums of features `from .. from + count`.
    function sums(uint32 from, uint32 count) external view returns (uint256[] memory s) {
        if (uint256(from) + count > numFeatures) revert BadRange(from, count, numFeatures);
        s = new uint256[](count);
        for (uint256 i = 0; i < count; ++i) {
            s[i] = _get(uint256(from) + i);
        }
    }

    /// @inheritdoc ISimClassifier
    function predict(bytes calldata features) public view returns (uint8) {
        uint256 n0 = docs[0];
        uint256 n1 = docs[1];
        if (n1 == 0) {
            _check(features);
            return 0;
        }
        if (n0 == 0) {
            _check(features);
            return 1;
        }
        (uint256 a0, uint256 a1) = _sums(features);
        int256 d0 = int256(sq[0]) - 2 * int256(n0) * int256(a0);
        int256 d1 = int256(sq[1]) - 2 * int256(n1) * int256(a1);
        return d1 * int256(n0 * n0) < d0 * int256(n1 * n1) ? 1 : 0;
    }

    /// @inheritdoc ISimClassifier
    function update(bytes calldata features, uint8 label) external onlyOwner returns (bool changed) {
        if (label > 1) revert BadLabel(label);
        _check(features);
        uint256 shift = label == 1 ? 128 : 0;
        uint256 q = sq[label];
        for (uint256 p = 0; p < features.length; p += 2) {
            uint256 f = uint16(bytes2(features[p:p + 2]));
            uint256 v = _get(f);
            uint256 s = (v >> shift) & LOW;
            q += 2 * s + 1;
            _set(f, v + (1 << shift));
        }
        sq[label] = q;
        docs[label] += 1;
        changed = true;
    }

    /// @inheritdoc ISimClassifier
    /// @dev keccak256(abi.encodePacked(docs0, docs1, sq0, sq1, slot[0], ..., slot[n - 1])).
    function stateHash() external view returns (bytes32 h) {
        uint256 n = numFeatures;
        bytes memory b = new bytes(128 + 32 * n);
        uint256 d0 = docs[0];
        uint256 d1 = docs[1];
        uint256 q0 = sq[0];
        uint256 q1 = sq[1];
        assembly ("memory-safe") {
            let p := add(b, 32)
            mstore(p, d0)
            mstore(add(p, 32), d1)
            mstore(add(p, 64), q0)
            mstore(add(p, 96), q1)
            for { let f := 0 } lt(f, n) { f := add(f, 1) } {
                mstore(add(add(p, 128), mul(f, 32)), sload(add(WEIGHTS_BASE, f)))
            }
        }
        h = keccak256(b);
    }

    /// @dev Sums of the present features' per-class sums, checking the encoding.
    function _sums(bytes calldata features) private view returns (uint256 a0, uint256 a1) {
        _check(features);
        for (uint256 p = 0; p < features.length; p += 2) {
            uint256 v = _get(uint16(bytes2(features[p:p + 2])));
            a0 += v & LOW;
            a1 += v >> 128;
        }
    }

    /// @dev Reverts unless `features` is packed uint16s, strictly increasing, below numFeatures.
    function _check(bytes calldata features) private view {
        if (features.length % 2 != 0) revert BadFeatures(features.length);
        uint256 next = 0;
        for (uint256 p = 0; p < features.length; p += 2) {
            uint16 f = uint16(bytes2(features[p:p + 2]));
            if (f < next || f >= numFeatures) revert BadFeature(p / 2, f);
            next = uint256(f) + 1;
        }
    }

    function _get(uint256 f) private view returns (uint256 v) {
        assembly ("memory-safe") {
            v := sload(add(WEIGHTS_BASE, f))
        }
    }

    function _set(uint256 f, uint256 v) private {
        assembly ("memory-safe") {
            sstore(add(WEIGHTS_BASE, f), v)
        }
    }
}
