// espalier.strategy.darts/1: DARTS bilevel optimisation (Liu et al., 2019). Each step the host's
// trainer does the architecture step on a validation batch (first order: the gradient at the
// current weights; second order: through one unrolled weight step), then the weight step on a
// training batch. An optional warm-up trains the weights alone for the first epochs. No derive:
// the host derives with the DARTS rule (top-2 incoming edges per node by the max non-`none`
// weight, argmax non-`none` op on each).

import EspalierPluginKit

final class DartsStrategy: StrategyComponent {
    static let id = "espalier.strategy.darts/1"

    let secondOrder: Bool
    let warmupEpochs: Int

    init(host: PluginHost, params: ParamValues) throws {
        let order = try params.string("order")
        switch order {
        case "first": secondOrder = false
        case "second": secondOrder = true
        default: throw PluginError.invalidArgument("\(Self.id): order must be 'first' or 'second' (got '\(order)')")
        }
        warmupEpochs = try params.int("warmup_epochs")
        guard warmupEpochs >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))")
        }
    }

    func planStep(state: RunState) throws -> StepPlan {
        if state.epoch < warmupEpochs { return StepPlan(.weightsOnly) }
        return StepPlan(.bilevel, secondOrder: secondOrder)
    }
}
