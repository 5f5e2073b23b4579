// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ISimClassifier} from "./SimClassifier.sol";

/// @title NaiveBayes
/// @notice A binary multinomial Naive Bayes classifier over sparse binary features
///         (scikit-learn's `MultinomialNB(alpha=1)` updated online), with logs in
///         deterministic fixed point. Per class c it keeps the number of samples
///         n_c, the per-feature counts N_{c,f} (samples of class c with feature f),
///         their total T_c, and L_{c,f} = log2(N_{c,f} + 1). The score of class c
///         for a sample with present features x is
///           log2(n_c) + sum_{f in x} L_{c,f} - |x| * log2(T_c + numFeatures),
///         i.e. log2 of the prior times the product of the Laplace-smoothed
///         feature probabilities, up to a term common to both classes; the
///         prediction is 1 iff score_1 > score_0 (ties go to 0, as sklearn's
///         argmax); a class without samples is never predicted (0 if neither has).
/// @dev Logs are log2 in Q32 (2^-32 units), computed by `log2Q32`: the integer part
///      from the most significant bit, then 32 fraction bits by repeated squaring of
///      the mantissa in Q60, each result rounded down. The Rust reference does the
///      same integer operations, so both agree bit for bit. The slot
///      WEIGHTS_BASE + f holds [N_{1,f}: 64][L_{1,f}: 64][N_{0,f}: 64][L_{0,f}: 64]
///      (high to low), so a prediction reads one slot per present feature.
contract NaiveBayes is ISimClassifier {
    uint256 private constant WEIGHTS_BASE = 0x100000000000000000000000000000000;
    uint256 private constant M64 = type(uint64).max;

    /// @notice Number of features; every feature index is below it.
    uint32 public immutable numFeatures;
    /// @notice The only address that may load the state and train the model.
    address public owner;
    /// @notice Samples per class.
    uint256[2] public docs;
    /// @notice Sum of the per-feature counts, per class.
    uint256[2] public totals;
    /// @notice log2Q32(docs[c]) (0 while docs[c] is 0), kept up to date.
    uint256[2] public logDocs;
    /// @notice log2Q32(totals[c] + numFeatures), kept up to date.
    uint256[2] public logDen;

    event OwnerChanged(address indexed previous, address indexed next);

    error NotOwner(address caller);
    error ZeroAddress();
    error BadFeature(uint256 position, uint16 feature);
    error BadFeatures(uint256 length);
    error BadLabel(uint8 label);
    error BadRange(uint256 from, uint256 count, uint32 numFeatures);
    error BadCount(uint256 count);

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

    /// @notice Loads the sample counts, the totals and the per-feature counts of
    ///         features `from .. from + counts0.length` (the logs are computed here).
    function load(
        uint256 docs0,
        uint256 docs1,
        uint256 totals0,
        uint256 totals1,
        uint32 from,
        uint64[] calldata counts0,
        uint64[] calldata counts1
    ) external onlyOwner {
        if (counts0.length != counts1.length || uint256(from) + counts0.length > numFeatures) {
            revert BadRange(from, counts0.length, numFeatures);
        }
        docs[0] = docs0;
        docs[1] = docs1;
        totals[0] = totals0;
        totals[1] = totals1;
        _logs(0);
        _logs(1);
        for (uint256 i = 0; i < counts0.length; ++i) {
            _set(uint256(from) + i, _cell(counts0[i]) | (_cell(counts1[i]) << 128));
        }
    }

    /// @notice The packed slots of features `from .. from + count`.
    function cells(uint32 from, uint32 count) external view returns (uint256[] memory s) {
        if (uint256(from) + count > numFeatures) revert BadRange(from, count, numFeatures);
        s = new uint256[](count);
        for (uint256 i = 0; i < count; ++i) {
            s[i] = _get(uint256(from) + i);
        }
    }

    /// @notice Score of class `c` for `features` (log2 in Q32; see the contract notice).
    ///         Meaningless while class c has no samples.
    function score(bytes calldata features, uint8 c) public view returns (int256) {
        if (c > 1) revert BadLabel(c);
        (uint256 s0, uint256 s1) = _sums(features);
        return _score(c, c == 1 ? s1 : s0, features.length / 2);
    }

    /// @inheritdoc ISimClassifier
    function predict(bytes calldata features) external view returns (uint8) {
        (uint256 s0, uint256 s1) = _sums(features);
        if (docs[1] == 0) return 0;
        if (docs[0] == 0) return 1;
        uint256 k = features.length / 2;
        return _score(1, s1, k) > _score(0, s0, k) ? 1 : 0;
    }

    /// @inheritdoc ISimClassifier
    function update(bytes calldata features, uint8 label) external onlyOwner returns (bool changed) {
        if (label > 1) revert BadLabel(label);
        _check(features);
        uint256 shift = label == 1 ? 128 : 0;
        for (uint256 p = 0; p < features.length; p += 2) {
            uint256 f = uint16(bytes2(features[p:p + 2]));
            uint256 v = _get(f);
            uint256 n = ((v >> shift) >> 64) & M64;
            v = (v & ~((type(uint256).max >> 128) << shift)) | (_cell(n + 1) << shift);
            _set(f, v);
        }
        totals[label] += features.length / 2;
        docs[label] += 1;
        _logs(label);
        changed = true;
    }

    /// @inheritdoc ISimClassifier
    /// @dev keccak256(abi.encodePacked(docs0, docs1, totals0, totals1, slot[0], ..., slot[n - 1])).
    function stateHash() external view returns (bytes32 h) {
        uint256 n = numFeatures;
        bytes memory b = new bytes(128 + 32 * n);
        uint256 d0 = docs[0];
        uint256 d1 = docs[1];
        uint256 t0 = totals[0];
        uint256 t1 = totals[1];
        assembly ("memory-safe") {
            let p := add(b, 32)
            mstore(p, d0)
            mstore(add(p, 32), d1)
            mstore(add(p, 64), t0)
            mstore(add(p, 96), t1)
            for { let f := 0 } lt(f, n) { f := add(f, 1) } {
                mstore(add(add(p, 128), mul(f, 32)), sload(add(WEIGHTS_BASE, f)))
            }
        }
        h = keccak256(b);
    }

    /// @notice floor(2^32 * log2(x)) for 1 <= x < 2^64: the integer part from the
    ///         most significant bit, then 32 fraction bits by squaring the mantissa
    ///         y = x / 2^msb in Q60 (y := floor(y * y / 2^60); a bit is 1 when
    ///         y >= 2, and then y := y / 2, rounded down). Reverts for 0.
    function log2Q32(uint256 x) public pure returns (uint256 r) {
        if (x == 0 || x > M64) revert BadCount(x);
        uint256 n = 0;
        uint256 t = x;
        unchecked {
            if (t >= 1 << 32) { t >>= 32; n += 32; }
            if (t >= 1 << 16) { t >>= 16; n += 16; }
            if (t >= 1 << 8) { t >>= 8; n += 8; }
            if (t >= 1 << 4) { t >>= 4; n += 4; }
            if (t >= 1 << 2) { t >>= 2; n += 2; }
            if (t >= 1 << 1) { n += 1; }
        }
        r = n << 32;
        uint256 y = (x << 60) >> n;
        unchecked {
            for (uint256 bit = 1 << 31; bit > 0; bit >>= 1) {
                y = (y * y) >> 60;
                if (y >= 1 << 61) {
                    y >>= 1;
                    r |= bit;
                }
            }
        }
    }

    function _score(uint256 c, uint256 sum, uint256 k) private view returns (int256) {
        return int256(logDocs[c]) + int256(sum) - int256(k) * int256(logDen[c]);
    }

    function _logs(uint256 c) private {
        uint256 d = docs[c];
        logDocs[c] = d == 0 ? 0 : log2Q32(d);
        logDen[c] = log2Q32(totals[c] + numFeatures);
    }

    /// @dev The per-class sums of L over the present features (one slot read each),
    ///      checking the encoding.
    function _sums(bytes calldata features) private view returns (uint256 s0, uint256 s1) {
        _check(features);
        for (uint256 p = 0; p < features.length; p += 2) {
            uint256 v = _get(uint16(bytes2(features[p:p + 2])));
            s0 += v & M64;
            s1 += (v >> 128) & M64;
        }
    }

    /// @dev [count: 64][log2Q32(count + 1): 64].
    function _cell(uint256 count) private pure returns (uint256) {
        if (count >= M64) revert BadCount(count);
        return (count << 64) | log2Q32(count + 1);
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
