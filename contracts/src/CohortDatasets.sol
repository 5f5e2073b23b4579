// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortBase} from "./CohortBase.sol";

/// @title CohortDatasets
/// @notice Dataset commitments (Merkle root + manifest hash) owned by their committer.
abstract contract CohortDatasets is CohortBase {
    /// @notice Commits a dataset owned by the caller. Callers with ROLE_DATA_OWNER
    ///         or ROLE_CLIENT. id = keccak256(abi.encode(msg.sender, merkleRoot,
    ///         manifestHash, size)); committing the same id twice reverts. A Merkle root
    ///         belongs to the first party that committed it: another committing the same data
    ///         reverts DatasetRootTaken (a copy of someone's data earns nothing twice).
    function commitDataset(bytes32 merkleRoot, bytes32 manifestHash, uint64 size) external returns (bytes32 id) {
        uint8 roles = _participants[msg.sender].roles;
        if (roles == 0) revert NotRegistered(msg.sender);
        if (roles & (ROLE_DATA_OWNER | ROLE_CLIENT) == 0) {
            revert MissingRole(msg.sender, ROLE_DATA_OWNER | ROLE_CLIENT);
        }
        id = keccak256(abi.encode(msg.sender, merkleRoot, manifestHash, size));
        Dataset storage d = _datasets[id];
        if (d.owner != address(0)) revert DatasetExists(id);
        address rootOwner = _rootOwner[merkleRoot];
        if (rootOwner == address(0)) _rootOwner[merkleRoot] = msg.sender;
        else if (rootOwner != msg.sender) revert DatasetRootTaken(merkleRoot, rootOwner);
        d.owner = msg.sender;
        d.size = size;
        d.committedAt = uint64(block.timestamp);
        d.merkleRoot = merkleRoot;
        d.manifestHash = manifestHash;
        emit DatasetCommitted(id, msg.sender, merkleRoot, manifestHash, size);
    }

    /// @notice Dataset record (owner == address(0) when unknown).
    function dataset(bytes32 id)
        external
        view
        returns (
            address owner,
            bytes32 merkleRoot,
            bytes32 manifestHash,
            uint64 size,
            uint64 committedAt,
            bool forgotten
        )
    {
        Dataset storage d = _datasets[id];
        return (d.owner, d.merkleRoot, d.manifestHash, d.size, d.committedAt, d.forgotten);
    }
}
