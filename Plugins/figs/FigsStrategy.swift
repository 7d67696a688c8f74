// espalier.strategy.figs/1: FiGS's search on the DARTS space (§3.3): no operator gate. Every edge
// sums its ops with weight 1 (ES_REQUIRES_NO_ARCH_PARAMS, no α), and the ops' own channel masks
// (FiGS ops, `--channel-gate espalier.gate.figs/1`) decide both the widths and which ops survive:
// an op whose mask keeps ⌊Σπ⌋ = 0 channels is gone. Every step is one weights step on a training
// batch; the mask logits are weights of their ops (SGD, no weight decay), trained jointly with
// them, and the expected-cost regularizer (espalier.regularizer.figs-cost/1) adds its gradient
// after every backward. No `derive`: the host exports the FiGS network itself (one entry per cell
// in the genotype's `per_cell`, ⌊Σπ⌋ channels per mask, ops with an all-off mask dropped).
// Parameter `aggregator` (sum or concat): FiGS's concat aggregator (§3.3), which the host builds —
// each node concatenates its ops' outputs into a 1×1 conv, so the exported ops keep ⌊Σπ_out⌋
// output channels instead of C. Parameter `bn_recalibration` (host convention, default 20): the
// batch-norm statistics are recomputed before each evaluation, as for GSparsity.

import EspalierPluginKit

final class FigsStrategy: StrategyComponent {
    static let id = "espalier.strategy.figs/1"

    init(host: PluginHost, params: ParamValues) throws {}

    func planStep(state: RunState) throws -> StepPlan { StepPlan(.weightsOnly) }
}
