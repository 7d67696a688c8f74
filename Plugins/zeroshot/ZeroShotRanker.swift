// Zero-shot ranking through the search services, shared by ETENAS and Zero-One-Shot: r(N) is the
// NNGP score (NNGPScore.swift) of the supernet's logits from `forward_logits` (forward only, batch
// norm in training mode, weights re-initialised from a seed, the same training images every
// call), and the importance of a group of candidates j (one op, or every op left on an edge) is
// s_j = mean over repeats of (r(N) − r(N∖j)) / r(N), with one seed per repeat used for N and for
// every N∖j of the comparison (identical re-initialisation). N∖j masks the group (ES_OP_MASKED),
// scores, and restores its states. The logits buffer, (batches·batch, classes), comes from the
// host's alloc under owner "zeroshot/logits". In a dry run nothing is computed and every score
// is 0. Not here: what to prune (the strategies).

import EspalierPluginKit

/// A candidate of the hypergraph: op `op` on edge `edge` of the cells of `type` (0 normal, 1 reduce).
struct Candidate: Hashable, CustomStringConvertible {
    let type: Int, edge: Int, op: Int
    var description: String { "\(type == 0 ? "normal" : "reduce") edge \(edge) op \(op)" }
}

final class ZeroShotRanker {
    let host: PluginHost
    let search: SearchServices
    let batches: Int, repeats: Int
    let info: SearchServices.SpaceInfo
    /// Short names (`sep_conv_3x3`) and component ids of the candidates, in α's column order.
    let names: [String], ids: [String]
    /// True while the host predicts memory: scores are 0 and nothing is read.
    var dryRun = false
    /// Rows (batches·batch) and classes of the logits; read from the host on first use.
    private var shape: (rows: Int, classes: Int)?
    /// Forward passes made so far (for the log).
    private(set) var passes = 0

    init(host: PluginHost, batches: Int, repeats: Int, who: String) throws {
        guard let search = host.search else { throw PluginError.unsupported("\(who): no search is running") }
        self.host = host
        self.search = search
        self.batches = batches
        self.repeats = repeats
        info = try search.spaceInfo()
        var names: [String] = [], ids: [String] = []
        for i in 0..<info.ops {
            guard let id = search.opName(i) else { throw PluginError.internalError("op_name(\(i)) returned NULL for \(info.ops) ops") }
            ids.append(id)
            let base = id.split(separator: "/").first.map(String.init) ?? id
            names.append(String(base.split(separator: ".").last ?? Substring(base)))
        }
        self.names = names
        self.ids = ids
    }

    /// The logits' shape: from get_value("batch") and get_value("space.classes"); a host that has
    /// not set them yet answers a probe of forward_logits with a (0, 0) view (ES_ERROR_SHAPE) and
    /// sets them.
    func logitsShape() throws -> (rows: Int, classes: Int) {
        if let shape { return shape }
        func read() -> (Int, Int)? {
            guard let b = try? search.value("batch"), let c = try? search.value("space.classes"), b >= 1, c >= 1 else { return nil }
            return (Int(b), Int(c))
        }
        if read() == nil {
            var probe = es_tensor_view()
            probe.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
            probe.rank = 2
            _ = try? search.forwardLogits(batches: batches, initSeed: 0, into: &probe)
        }
        guard let (b, c) = read() else {
            throw PluginError.unsupported("the host reports no batch size and class count (get_value 'batch' and 'space.classes'), so the logits of forward_logits cannot be shaped")
        }
        shape = (batches * b, c)
        return shape!
    }

    /// r(N) for the supernet as its op states are now, weights from `seed`.
    func score(seed: UInt64) throws -> Double {
        let (n, c) = try logitsShape()
        let p = try host.allocate(bytes: n * c * MemoryLayout<Float>.size, category: .workspace, owner: "zeroshot/logits")
        defer { host.free(p) }
        var view = es_tensor_view()
        view.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
        view.rank = 2
        view.data = dryRun ? nil : p.assumingMemoryBound(to: Float.self)
        withUnsafeMutableBytes(of: &view.shape) { raw in
            raw.storeBytes(of: Int64(n), toByteOffset: 0, as: Int64.self)
            raw.storeBytes(of: Int64(c), toByteOffset: 8, as: Int64.self)
        }
        try search.forwardLogits(batches: batches, initSeed: seed, into: &view)
        passes += 1
        if dryRun { return 0 }
        return nngpScore(p.assumingMemoryBound(to: Float.self), rows: n, classes: c)
    }

    /// One seed per repeat, from the host's RNG (a comparison uses them for N and every N∖j).
    func seeds() throws -> [UInt64] { try (0..<repeats).map { _ in try host.randomU64() } }

    /// The candidates whose state is `active` on an edge.
    func active(type: Int, edge: Int) throws -> [Int] {
        try (0..<info.ops).filter { try search.opState(cellType: type, edge: edge, op: $0) == .active }
    }

    /// s_j for each group (masked together): mean over `seeds` of (r(N) − r(N∖j)) / r(N); a repeat
    /// whose r(N) is 0 (a dry run) counts 0.
    func importance(of groups: [[Candidate]], seeds: [UInt64]) throws -> [Double] {
        let base = try seeds.map { try score(seed: $0) }
        return try groups.map { group in
            let saved = try group.map { try search.opState(cellType: $0.type, edge: $0.edge, op: $0.op) }
            for c in group { try search.setOpState(cellType: c.type, edge: c.edge, op: c.op, .masked) }
            defer {
                for (c, s) in zip(group, saved) { try? search.setOpState(cellType: c.type, edge: c.edge, op: c.op, s) }
            }
            var s = 0.0
            for (r, seed) in zip(base, seeds) where r > 0 {
                s += (r - (try score(seed: seed))) / r
            }
            return s / Double(max(seeds.count, 1))
        }
    }
}
