// How a search updates its parameters each step: the optimisers (SGD on the weights, Adam on α)
// and the cosine schedule of the weights' learning rate, the chosen dynamic methods that set a
// gate's τ or the regularizers' λ before every step, the regularizer plugins (an architecture
// step's terms, proximal steps after weight steps) with the one that may own the weight update,
// and the per-candidate costs the gate-weight regularizers are handed (SearchRun+Regularizers.swift).

import EspalierCore
import EspalierHost

/// What the trainer (`SearchRun`) updates its weights and α with, step by step. The optimisers
/// are replaced when the supernet grows (SearchRun+Grow.swift), which also drops the cost cache.
struct SearchUpdates {
    var weightOptimizer: SGD
    var archOptimizer: Adam
    /// The weights' learning rate per epoch (cosine, from `--lr` down to the config's minimum).
    let schedule: CosineSchedule
    /// Chosen schedules: slot ("tau.schedule", "lambda.schedule") → method, called before every step.
    let schedules: [(slot: String, method: DynamicMethod)]
    /// Regularizer plugins, called in every architecture step (and after weight steps, proximal).
    let regularizers: [PluginRegularizer]
    /// The regularizer whose `proximal` IS the weight update (`owns_update=true`, ProxSGD): the
    /// host then runs no SGD step and hands it every weight with its gradient. nil = SGD.
    let updateOwner: PluginRegularizer?
    /// Per-candidate costs for gate-weight regularizers (measured once).
    /// Per slot (edges, ops), and per cell's inter-cell inputs (hyper-connected), unmasked.
    var costCache: (slots: [CandidateCosts], inputs: [CandidateCosts])? = nil
}
