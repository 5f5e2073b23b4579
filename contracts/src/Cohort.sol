// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {CohortAnchor} from "./CohortAnchor.sol";
import {CohortDatasets} from "./CohortDatasets.sol";
import {CohortGovernance} from "./CohortGovernance.sol";
import {CohortRegistry} from "./CohortRegistry.sol";
import {CohortRounds} from "./CohortRounds.sol";
import {CohortStages} from "./CohortStages.sol";
import {CohortStaking} from "./CohortStaking.sol";
import {CohortToken} from "./CohortToken.sol";
import {CohortUnlearning} from "./CohortUnlearning.sol";

/// @title Cohort
/// @notice The single deployable cohort protocol contract: internal token,
///         registry, staking, datasets, federated rounds, unlearning, anchoring, stage
///         servers (escrowed pay per token, fraud claims by quorum, slashing).
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
    /// @notice The code of the stage-server functions (`CohortStages`, deployed by the
    ///         constructor). Every call whose selector is none of Cohort's own runs that code in
    ///         this contract's storage (see `fallback`): the ABI of this address is Cohort's and
    ///         CohortStages' together.
    address public immutable stages;

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
            maxValidatorsPerRound: 32,
            rewardPerScore: 0
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
        // Stage servers: 1000 tokens of stake, a one-hour challenge window, a quorum of two
        // verifiers, half the stake slashed, a tenth of that to the attesters; set through the
        // module's own setter, which checks them.
        address stagesCode = address(new CohortStages());
        stages = stagesCode;
        StageParams memory sp = StageParams({
            minStageStake: 1_000 * TOKEN_UNIT,
            stageChallengeWindow: 1 hours,
            stageQuorum: 2,
            stageSlashBps: 5_000,
            stageAttesterBps: 1_000
        });
        (bool ok, bytes memory ret) = stagesCode.delegatecall(abi.encodeCall(CohortStages.setStageParams, (sp)));
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 32), mload(ret))
            }
        }
    }

    /// @notice Runs CohortStages' code for any other selector, in this contract's storage, with
    ///         the caller's msg.sender; its return data or revert data is this call's.
    fallback() external {
        address target = stages;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, 0, calldatasize())
            let ok := delegatecall(gas(), target, ptr, calldatasize(), 0, 0)
            returndatacopy(ptr, 0, returndatasize())
            if iszero(ok) { revert(ptr, returndatasize()) }
            return(ptr, returndatasize())
        }
    }
}
