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
        published["memory.dataset_bytes"] = Double(trainLoader.view.dataset.byteCount)
        // Only for runs that regularize gate weights (they measure the costs anyway).
        guard regularizers.contains(where: { $0.wants(.gateWeights) }), !supernet.space.sumOps, !accountant.isDryRun,
              supernet.cells.contains(where: { $0.lastInputShape != nil }) else { return }
        let costs = try candidateCosts()
        for (type, reduction, c) in [("normal", false, costs.normal), ("reduce", true, costs.reduce)] {
            let w = try supernet.mixingWeights(reduction: reduction, accountant: accountant).flatMap { $0 }
            guard w.count == c.memory.count else { continue }
            var num = 0.0, den = 0.0
            for (s, g) in zip(c.memory, w) where g.isFinite {
                num += Double(s) * Double(g)
                den += Double(s)
            }
            published["candidate_bytes/\(type)"] = den
            published["compression/\(type)"] = den > 0 ? num / den : 1
        }
    }
}
