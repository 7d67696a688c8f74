// What a section-growing strategy (Bonsai-Net) reads about memory through get_value, published
// by the search loop for the duration of every epoch_begin and epoch_end (and dropped after, so
// checkpoints, which restore values through set_value, never hold them):
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
    static let sectionValuePrefixes = ["memory.dataset_bytes", "candidate_bytes/", "compression/"]

    /// Runs `body` (a strategy hook) with the section values published.
    func withSectionValues<T>(_ body: () throws -> T) throws -> T {
        try publishSectionValues()
        defer { dropSectionValues() }
        return try body()
    }

    func dropSectionValues() {
        for key in values.keys where Self.sectionValuePrefixes.contains(where: { key.hasPrefix($0) }) { values[key] = nil }
    }

    public func publishSectionValues() throws {
        values["memory.dataset_bytes"] = Double(trainLoader.view.dataset.byteCount)
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
            values["candidate_bytes/\(type)"] = den
            values["compression/\(type)"] = den > 0 ? num / den : 1
        }
    }
}
