// espalier.strategy.etenas/1: ETENAS (Rumiantsev & Coates, 2023), zero-shot search with no
// training. At the first step (so that its memory counts in the epoch's peak and in the dry-run
// prediction) it prunes by the NNGP ranking (ZeroShotRanker.swift): (1) rounds in which every
// op of every edge with more than one left is scored and the lowest of each such edge removed,
// until one op is left per edge (`none` is never the last: an edge down to `none` and one other
// drops `none`); (2) rounds in which, for every node with more than two incoming edges, each
// edge is scored by masking it whole and the lowest is removed, until two are left per node.
// Every step is ES_STEP_SKIP; epoch_end stops the search after the first epoch; derive writes
// the pruned cells (genotype JSON with the ops' component ids). With `partial_channels` > 1 the
// scoring network has PC-DARTS's partial channels (ETENAS-PC). In a dry run one forward pass is
// made (its memory is the search's) and nothing is pruned. Saved state (format 1): the pruned
// cells and the ops' names and ids, so a search resumed after the first step does not search again.

import EspalierPluginKit

final class EtenasStrategy: DerivingStrategy, StatefulComponent {
    static let id = "espalier.strategy.etenas/1"

    let host: PluginHost
    let batches: Int, repeats: Int
    let pruneState: SearchServices.OpState
    let partialChannels: Int
    /// The pruned cells, once searched: per cell type, per node, two (op index, input).
    private(set) var cells: [[(op: Int, input: Int)]]? = nil
    private var names: [String] = [], ids: [String] = []

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        batches = try params.int("batches")
        repeats = try params.int("repeats")
        guard batches >= 1 else { throw PluginError.invalidArgument("\(Self.id): batches must be >= 1 (got \(batches)); the paper uses 3 batches of 128") }
        guard repeats >= 1 else { throw PluginError.invalidArgument("\(Self.id): repeats must be >= 1 (got \(repeats))") }
        pruneState = try pruneStateParam(params, Self.id)
        partialChannels = try params.int("partial_channels")
        guard partialChannels >= 1 else { throw PluginError.invalidArgument("\(Self.id): partial_channels must be >= 1 (got \(partialChannels))") }
    }

    func planStep(state: RunState) throws -> StepPlan {
        if cells == nil { try searchCells(dryRun: state.isDryRun) }
        return StepPlan(.skip)
    }

    func epochEnd(state: RunState, metrics: EpochMetrics) throws -> Bool { true }

    /// Edge index of input `j` of node `i`.
    static func edge(node i: Int, input j: Int) -> Int { (0..<i).reduce(0) { $0 + 2 + $1 } + j }

    func searchCells(dryRun: Bool) throws {
        let ranker = try ZeroShotRanker(host: host, batches: batches, repeats: repeats, who: Self.id)
        ranker.dryRun = dryRun
        names = ranker.names
        ids = ranker.ids
        if dryRun { _ = try ranker.score(seed: 0); return }
        let search = ranker.search
        let edges = ranker.info.edges, nodes = ranker.info.nodes
        var ops: [[Int]] = []
        for t in 0..<2 { for e in 0..<edges { ops.append(try ranker.active(type: t, edge: e)) } }
        guard ops.allSatisfy({ !$0.isEmpty }) else { throw PluginError.invalidArgument("\(Self.id): an edge has no active candidate") }
        func remove(_ i: Int, _ o: Int) throws {
            try search.setOpState(cellType: i / edges, edge: i % edges, op: o, pruneState)
            ops[i].removeAll { $0 == o }
        }
        // (1) One op per edge.
        var round = 0
        while true {
            let prunable = (0..<(2 * edges)).filter { ops[$0].count > 1 }
            if prunable.isEmpty { break }
            round += 1
            let groups = prunable.flatMap { i in ops[i].map { [Candidate(type: i / edges, edge: i % edges, op: $0)] } }
            let s = try ranker.importance(of: groups, seeds: try ranker.seeds())
            var lowest: [Int: (op: Int, s: Double)] = [:]
            for (g, v) in zip(groups, s) {
                let key = g[0].type * edges + g[0].edge
                if lowest[key] == nil || v < lowest[key]!.s { lowest[key] = (g[0].op, v) }
            }
            for i in prunable {
                var o = lowest[i]!.op
                if ops[i].count == 2, let none = ops[i].first(where: { names[$0] == "none" }) { o = none }
                try remove(i, o)
            }
            host.log("\(Self.id): op round \(round): \(groups.count) ops scored, one removed from each of \(prunable.count) edges")
        }
        // (2) Two edges per node: mask a whole edge to score it.
        var alive = [[Bool]](repeating: [Bool](repeating: true, count: edges), count: 2)
        round = 0
        while true {
            var groups: [[Candidate]] = [], owners: [(type: Int, node: Int, edge: Int)] = []
            for t in 0..<2 {
                for i in 0..<nodes {
                    let incoming = (0..<(2 + i)).map { Self.edge(node: i, input: $0) }.filter { alive[t][$0] }
                    guard incoming.count > 2 else { continue }
                    for e in incoming {
                        groups.append(ops[t * edges + e].map { Candidate(type: t, edge: e, op: $0) })
                        owners.append((t, i, e))
                    }
                }
            }
            if groups.isEmpty { break }
            round += 1
            let s = try ranker.importance(of: groups, seeds: try ranker.seeds())
            var lowest: [Int: (edge: Int, s: Double)] = [:]
            for (w, v) in zip(owners, s) {
                let key = w.type * nodes + w.node
                if lowest[key] == nil || v < lowest[key]!.s { lowest[key] = (w.edge, v) }
            }
            for (key, l) in lowest.sorted(by: { $0.key < $1.key }) {
                let t = key / nodes, i = t * edges + l.edge
                alive[t][l.edge] = false
                for o in ops[i] { try remove(i, o) }
            }
            host.log("\(Self.id): edge round \(round): \(groups.count) edges scored, \(lowest.count) removed")
        }
        var found: [[(op: Int, input: Int)]] = []
        for t in 0..<2 {
            var cell: [(op: Int, input: Int)] = []
            for i in 0..<nodes {
                for j in 0..<(2 + i) where alive[t][Self.edge(node: i, input: j)] {
                    cell.append((ops[t * edges + Self.edge(node: i, input: j)][0], j))
                }
            }
            found.append(cell)
        }
        cells = found
        host.log("\(Self.id): \(ranker.passes) forward passes; found \(try genotypeJSON())")
    }

    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.bool(cells != nil)
        w.int(names.count)
        for (n, i) in zip(names, ids) { w.string(n); w.string(i) }
        w.int(cells?.count ?? 0)
        for c in cells ?? [] { w.ints(c.flatMap { [$0.op, $0.input] }) }
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let searched = try r.bool("searched flag")
        let ops = try (0..<r.count("ops", itemBytes: 16)).map { _ in (try r.string("op name"), try r.string("op id")) }
        let flat = try (0..<r.count("cell types", itemBytes: 8)).map { _ in try r.ints("cell edges") }
        try r.finish()
        guard flat.allSatisfy({ $0.count % 2 == 0 && $0.allSatisfy { $0 >= 0 } && $0.enumerated().allSatisfy { $0.offset % 2 == 1 || $0.element < ops.count } }) else {
            throw PluginError.invalidArgument("\(Self.id): saved state holds cells that are not (op, input) pairs over \(ops.count) ops")
        }
        names = ops.map(\.0); ids = ops.map(\.1)
        cells = searched ? flat.map { f in stride(from: 0, to: f.count, by: 2).map { (op: f[$0], input: f[$0 + 1]) } } : nil
    }

    func derive(state: RunState) throws -> String { try genotypeJSON() }

    /// The pruned cells as genotype JSON (one line), with the ops' component ids.
    func genotypeJSON() throws -> String {
        guard let cells else { throw PluginError.unsupported("\(Self.id): nothing has been searched yet; run at least one step") }
        func quoted(_ s: String) -> String { "\"" + s.map { $0 == "\"" || $0 == "\\" ? "\\\($0)" : String($0) }.joined() + "\"" }
        func cell(_ edges: [(op: Int, input: Int)]) -> String {
            "[" + edges.map { "[\(quoted(names[$0.op])), \($0.input)]" }.joined(separator: ", ") + "]"
        }
        let nodes = cells[0].count / 2
        let concat = "[" + (2..<(2 + nodes)).map(String.init).joined(separator: ", ") + "]"
        let used = Set((cells[0] + cells[1]).map(\.op)).sorted()
        let opIDs = used.map { "\(quoted(names[$0])): \(quoted(ids[$0]))" }.joined(separator: ", ")
        return "{\"normal\": \(cell(cells[0])), \"normal_concat\": \(concat), \"reduce\": \(cell(cells[1])), \"reduce_concat\": \(concat), \"op_ids\": {\(opIDs)}}"
    }
}
