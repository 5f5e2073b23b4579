// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortAnchor} from "./CohortAnchor.sol";
import {CohortDatasets} from "./CohortDatasets.sol";
import {CohortGovernance} from "./CohortGovernance.sol";
import {CohortRegistry} from "./CohortRegistry.sol";
import {CohortRounds} from "./CohortRounds.sol";
import {CohortStaking} from "./CohortStaking.sol";
import {CohortToken} from "./CohortToken.sol";
import {CohortUnlearning} from "./CohortUnlearning.sol";

/// @title Cohort
/// @notice The single deployable cohort protocol contract: internal token,
///         registry, staking, datasets, federated rounds, unlearning, anchoring.
contract Cohort is
    CohortGovernance,
    CohortToken,
    CohortRegistry,
    CohortStaking,
    CohortDatasets,
    CohortRounds,
    CohortUnlearning,
    CohortAnchor
{
    /// @notice Makes the deployer governance and installs the default params.
    constructor() {
        governance = msg.sender;
        emit GovernanceChanged(address(0), msg.sender);
        Params memory p = Params({
            acceptThreshold: 0,
            updateDeposit: 10 * TOKEN_UNIT,
            minClientStake: 100 * TOKEN_UNIT,
            minValidatorStake: 1_000 * TOKEN_UNIT,
            slashRejectBps: 1_000,
            slashNoRevealBps: 500,
            validatorRewardBps: 1_000,
            consensusTolerance: 50_000,
            unbondingPeriod: 1 days,
            maxUpdatesPerRound: 256,
            maxValidatorsPerRound: 32
        });
        _validateParams(p);
        _params = p;
        emit ParamsUpdated(p);
        // Unlearning methods: retrain and shards exact, fed-eraser, lora-ga and lora-npo not.
        _addMethod(1, true);
        _addMethod(2, true);
        _addMethod(3, false);
        _addMethod(4, false);
        _addMethod(5, false);
    }
}
