// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

/// @title ISimClassifier
/// @notice The on-chain binary classifier an incentive mechanism of the
///         collaborative-learning simulator asks for predictions and trains with
///         every accepted contribution (0xDeCA10B's `Classifier64`, reduced to what
///         the mechanisms use).
/// @dev A sample is the list of the indices of its present features (a binary
///      bag of words), packed as big-endian uint16s (2 bytes each): strictly
///      increasing, each below the model's number of features. Packing keeps the
///      calldata and the hash a mechanism stores of it small. Labels are 0 or 1.
interface ISimClassifier {
    /// @notice The predicted label (0 or 1) of `features`.
    function predict(bytes calldata features) external view returns (uint8);

    /// @notice Trains the model with one labelled sample. Only the model's owner
    ///         (the mechanism) may call it. Returns false if the model predicts
    ///         exactly as before (a perceptron that was already right), so that a
    ///         caller may skip re-evaluating it.
    function update(bytes calldata features, uint8 label) external returns (bool changed);

    /// @notice A keccak of the model's whole learned state: two models with the same
    ///         hash predict alike and train alike (the prediction market checks that
    ///         every reward round starts from the initial model with it).
    function stateHash() external view returns (bytes32);
}
