// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ISimClassifier} from "./SimClassifier.sol";

/// @title SparsePerceptron
/// @notice A binary perceptron over sparse binary features whose update is
///         scikit-learn's `SGDClassifier(loss='perceptron', penalty=None,
///         learning_rate='optimal')` in fixed point: for the t-th sample seen
///         (t from 1, counting the off-chain initial fit), with y = +1 for label 1
///         and -1 for label 0 and s = bias + sum of the present features' weights,
///         if y * s <= 0 then every present weight and the bias move by
///         y * floor(etaNumerator / (etaOffset + t)).
///         With alpha = 1e-4, eta_t = 10000 / (999 + t): etaNumerator = 1e4 * 1e9,
///         etaOffset = 999. The prediction is 1 iff s > 0.
/// @dev Weights and bias are int256 scaled by WEIGHT_SCALE = 1e9. Weight f lives at
///      storage slot WEIGHTS_BASE + f, so reading or writing one costs no hashing.
///      Samples are packed uint16 feature indices (see ISimClassifier), so
///      numFeatures is at most 65,536.
contract SparsePerceptron is ISimClassifier {
    /// @notice Fixed-point scale of the weights, the bias and etaNumerator.
    int256 public constant WEIGHT_SCALE = 1e9;
    /// @dev 2^128: far above the few slots the state variables take.
    uint256 private constant WEIGHTS_BASE = 0x100000000000000000000000000000000;

    /// @notice Number of features; every feature index is below it.
    uint32 public immutable numFeatures;
    /// @notice eta_t = etaNumerator / (etaOffset + t), scaled by WEIGHT_SCALE.
    uint256 public immutable etaNumerator;
    /// @notice See etaNumerator.
    uint256 public immutable etaOffset;

    /// @notice The only address that may load weights and train the model.
    address public owner;
    /// @notice Intercept, scaled by WEIGHT_SCALE.
    int256 public bias;
    /// @notice Samples seen so far (the t of the last update).
    uint256 public samplesSeen;

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

    constructor(uint32 numFeatures_, uint256 etaNumerator_, uint256 etaOffset_) {
        if (numFeatures_ > 65_536) revert BadRange(0, numFeatures_, 65_536);
        numFeatures = numFeatures_;
        etaNumerator = etaNumerator_;
        etaOffset = etaOffset_;
        owner = msg.sender;
        emit OwnerChanged(address(0), msg.sender);
    }

    /// @notice Hands the model to `next` (the mechanism that will train it).
    function setOwner(address next) external onlyOwner {
        if (next == address(0)) revert ZeroAddress();
        emit OwnerChanged(owner, next);
        owner = next;
    }

    /// @notice Loads starting weights `w` for features `from .. from + w.length`,
    ///         the bias and the number of samples the off-chain fit has seen.
    ///         Called in batches by the deployer before handing the model over.
    function load(int256 bias_, uint256 samplesSeen_, uint32 from, int256[] calldata w)
        external
        onlyOwner
    {
        if (uint256(from) + w.length > numFeatures) revert BadRange(from, w.length, numFeatures);
        bias = bias_;
        samplesSeen = samplesSeen_;
        for (uint256 i = 0; i < w.length; ++i) {
            _setWeight(uint256(from) + i, w[i]);
        }
    }

    /// @notice Weight of feature `f` (scaled by WEIGHT_SCALE).
    function weight(uint32 f) external view returns (int256) {
        return _weight(f);
    }

    /// @notice Weights of features `from .. from + count`.
    function weights(uint32 from, uint32 count) external view returns (int256[] memory w) {
        if (uint256(from) + count > numFeatures) revert BadRange(from, count, numFeatures);
        w = new int256[](count);
        for (uint256 i = 0; i < count; ++i) {
            w[i] = _weight(uint256(from) + i);
        }
    }

    /// @notice bias + the sum of the weights of the present features; reverts
    ///         `BadFeatures` unless `features` is packed uint16s, strictly
    ///         increasing and below numFeatures.
    function score(bytes calldata features) public view returns (int256 s) {
        s = bias + _sum(features);
    }

    /// @inheritdoc ISimClassifier
    function predict(bytes calldata features) external view returns (uint8) {
        return score(features) > 0 ? 1 : 0;
    }

    /// @inheritdoc ISimClassifier
    /// @dev `changed` is true iff the weights and bias moved (samplesSeen advances
    ///      either way, but predictions depend on the weights and bias only).
    function update(bytes calldata features, uint8 label) external onlyOwner returns (bool changed) {
        if (label > 1) revert BadLabel(label);
        int256 s = score(features);
        uint256 t = samplesSeen + 1;
        samplesSeen = t;
        int256 y = label == 1 ? int256(1) : int256(-1);
        if (y * s <= 0) {
            int256 delta = y * int256(etaNumerator / (etaOffset + t));
            assembly ("memory-safe") {
                let end := add(features.offset, features.length)
                for { let p := features.offset } lt(p, end) { p := add(p, 2) } {
                    let slot := add(WEIGHTS_BASE, shr(240, calldataload(p)))
                    sstore(slot, add(sload(slot), delta))
                }
            }
            bias += delta;
            changed = true;
        }
    }

    /// @inheritdoc ISimClassifier
    /// @dev keccak256(abi.encodePacked(bias, samplesSeen, w[0], ..., w[numFeatures - 1])).
    function stateHash() external view returns (bytes32 h) {
        uint256 n = numFeatures;
        bytes memory b = new bytes(64 + 32 * n);
        int256 b0 = bias;
        uint256 t = samplesSeen;
        assembly ("memory-safe") {
            let p := add(b, 32)
            mstore(p, b0)
            mstore(add(p, 32), t)
            for { let f := 0 } lt(f, n) { f := add(f, 1) } {
                mstore(add(add(p, 64), mul(f, 32)), sload(add(WEIGHTS_BASE, f)))
            }
        }
        h = keccak256(b);
    }

    /// @dev Sum of the present features' weights, checking the encoding. The sum is
    ///      unchecked: reaching 2^255 would take more updates than any chain can run.
    function _sum(bytes calldata features) private view returns (int256 s) {
        uint256 n = numFeatures;
        uint256 bad = 0;
        if (features.length % 2 != 0) revert BadFeatures(features.length);
        assembly ("memory-safe") {
            let end := add(features.offset, features.length)
            let next := 0
            for { let p := features.offset } lt(p, end) { p := add(p, 2) } {
                let f := shr(240, calldataload(p))
                if or(lt(f, next), iszero(lt(f, n))) {
                    bad := add(sub(p, features.offset), 1)
                    break
                }
                next := add(f, 1)
                s := add(s, sload(add(WEIGHTS_BASE, f)))
            }
        }
        if (bad != 0) revert BadFeature((bad - 1) / 2, uint16(bytes2(features[bad - 1:bad + 1])));
    }

    function _weight(uint256 f) private view returns (int256 v) {
        assembly ("memory-safe") {
            v := sload(add(WEIGHTS_BASE, f))
        }
    }

    function _setWeight(uint256 f, int256 v) private {
        assembly ("memory-safe") {
            sstore(add(WEIGHTS_BASE, f), v)
        }
    }
}
