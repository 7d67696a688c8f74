// espalier.strategy.gdas/1: GDAS's search loop (Dong & Yang, 2019): bilevel and first order, as
// DARTS's first-order strategy, but it needs a sampled, hard gate (espalier.gate.gdas/1), so that
// each step runs one sampled op per edge. No derive of its own: for a sampled gate the host's
// DARTS rule ranks by softmax(α) (the evaluation gate is one-hot, on which every edge would tie). Not here: GDAS's
// NAS-Bench-201 cells or its reduction-cell variant (GDAS-FRC).

import EspalierPluginKit

final class GdasStrategy: StrategyComponent {
    static let id = "espalier.strategy.gdas/1"

    private let host: PluginHost
    let warmupEpochs: Int

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        warmupEpochs = try params.int("warmup_epochs")
        guard warmupEpochs >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))")
        }
    }

    func planStep(state: RunState) throws -> StepPlan {
        state.epoch < warmupEpochs ? StepPlan(.weightsOnly) : StepPlan(.bilevel)
    }

}
