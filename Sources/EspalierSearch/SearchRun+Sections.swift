// What a section-growing strategy (Bonsai-Net) reads about memory through get_value, published
// (read-only, never checkpointed) by the search loop before every epoch_begin and epoch_end:
//   memory.dataset_bytes       the training set's bytes (in the accountant, outside a step's
//                              prediction: predict_peak + this = the measured peak)
//   candidate_bytes/{normal,reduce}  Σ_j s_j over the cell type's candidates: the accountant's
//                              bytes per candidate (`candidateCosts()`: parameters, gradients and
//                              momentum, plus the activations its forward keeps), summed over the
//                              cells of the type; masked and removed candidates cost 0
//   compression/{normal,reduce}      c = Σ_j s_j·g_j / Σ_j s_j with g the gate's weights now
//                              (for the saw-wave gate: the share of those bytes still running)
// In a hyper-connected space the values are per cell (candidate_bytes/cellI, compression/cellI)
// and a cell's connections are its candidates and its inter-cell inputs (their preprocessing).
// The candidate values appear once a forward has run (the costs need the edges' input shapes),
// and only in runs with a regularizer on gate weights (which measure the costs anyway).

import EspalierCore
import EspalierHost
import Foundation

extension SearchRun {
    /// Runs `body` (a strategy hook) with the section values freshly published.
    func withSectionValues<T>(_ body: () throws -> T) throws -> T {
        try publishSectionValues()
        return try body()
    }

    public func publishSectionValues() throws {
        services.published["memory.dataset_bytes"] = Double(trainLoader.view.dataset.byteCount)
        // Only for runs that regularize gate weights (they measure the costs anyway).
        guard regularizers.contains(where: { $0.wants(.gateWeights) }), !supernet.space.sumOps, !accountant.isDryRun,
              supernet.cells.contains(where: { $0.lastInputShape != nil }) else { return }
        let costs = try slotCosts()
        for (slot, name) in supernet.slotNames.enumerated() {
            var w = try supernet.mixingWeights(slot: slot, accountant: accountant).flatMap { $0 }
            var c = costs.slots[slot].memory
            guard w.count == c.count else { continue }
            // Hyper-connected: a cell's inter-cell inputs are connections of the cell too.
            if supernet.hyperConnected && slot < costs.inputs.count {
                w += try supernet.inputWeights(cell: slot, accountant: accountant)
                c += costs.inputs[slot].memory
            }
            var num = 0.0, den = 0.0
            for (s, g) in zip(c, w) where g.isFinite {
                num += Double(s) * Double(g)
                den += Double(s)
            }
            services.published["candidate_bytes/\(name)"] = den
            services.published["compression/\(name)"] = den > 0 ? num / den : 1
        }
    }
}
