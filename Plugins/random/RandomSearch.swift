// espalier.strategy.random/1: random search over the DARTS cell space. At the first step of each
// epoch it samples `samples_per_epoch` architectures uniformly — for the normal and the reduce
// cell, each node takes 2 distinct inputs among its predecessors, each through an op drawn
// uniformly among the candidates that are not `none` and not removed — from the host's RNG,
// trains each from scratch for `child_steps` steps through the `train_child` service and keeps
// the best validation accuracy (the first on a tie); on several ranks each rank trains its share
// of the samples (ABI 1.4 ranks and sum_over_ranks). Every step is ES_STEP_SKIP, so the host's
// trainer does no supernet work; `derive` returns the best architecture. The work is done in
// plan_step rather than epoch_begin so that the children's memory counts in the epoch's peak and
// in the dry-run prediction, which trains one step of every child that may cost the most: every
// edge with the same op, for each op, with each node's two first or two last inputs (a child's
// memory is its edges' ops, and a uniform child of the costliest op keeps the most). The best architecture and its accuracy are the
// instance's saved state (format 1), so a resumed search keeps comparing against them. Not here:
// any weight sharing.

import EspalierPluginKit

final class RandomSearchStrategy: DerivingStrategy, StatefulComponent {
    static let id = "espalier.strategy.random/1"

    let host: PluginHost
    let samplesPerEpoch: Int
    let childSteps: Int
    /// The best architecture so far (genotype JSON) and its validation accuracy.
    private(set) var best: (json: String, accuracy: Double)?

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        samplesPerEpoch = try params.int("samples_per_epoch")
        childSteps = try params.int("child_steps")
        guard samplesPerEpoch >= 1 else {
            throw PluginError.invalidArgument("\(Self.id): samples_per_epoch must be >= 1 (got \(samplesPerEpoch))")
        }
        guard childSteps >= 1 else {
            throw PluginError.invalidArgument("\(Self.id): child_steps must be >= 1 (got \(childSteps))")
        }
    }

    func planStep(state: RunState) throws -> StepPlan {
        let stepsPerEpoch = max(1, state.totalSteps / max(1, state.totalEpochs))
        if state.step % stepsPerEpoch == 0 { try sampleAndTrain(state: state) }
        return StepPlan(.skip)
    }

    /// The epoch's samples; in a dry run (a memory prediction) one step of each costliest-kind
    /// child instead (`CellSpace.boundingGenotypes`), so the prediction bounds every sample.
    func sampleAndTrain(state: RunState) throws {
        guard let search = host.search else { throw PluginError.unsupported("\(Self.id): no search is running") }
        let space = try CellSpace(search)
        if state.isDryRun {
            for json in try space.boundingGenotypes() { _ = try search.trainChild(arch: json, steps: 1) }
            return
        }
        // Every rank draws every sample (the same draws); on several ranks (ABI 1.4) sample k is
        // trained by rank k mod N alone and the accuracies are summed, so the result is the same
        // on any number of ranks (a child's training depends on its architecture and the seed only).
        let count = samplesPerEpoch
        let samples = try (0..<count).map { _ in try space.sampleGenotype(host) }
        let (rank, ranks) = try search.ranks()
        var accuracies = [Double](repeating: 0, count: count)
        for k in 0..<count where k % ranks == rank {
            accuracies[k] = try search.trainChild(arch: samples[k], steps: childSteps)
        }
        accuracies = try search.sumOverRanks(accuracies)
        for (k, (json, accuracy)) in zip(samples, accuracies).enumerated() {
            if best == nil || accuracy > best!.accuracy { best = (json, accuracy) }
            if rank == 0 {
                host.log("\(Self.id): epoch \(state.epoch + 1) sample \(k + 1)/\(count): valid accuracy \(accuracy)"
                         + (ranks > 1 ? " (trained on rank \(k % ranks))" : "") + ", architecture \(json)")
            }
        }
    }

    /// Format 1: has-best flag, then the best architecture's JSON and its accuracy.
    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.bool(best != nil)
        if let best { w.string(best.json); w.double(best.accuracy) }
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let loaded = try r.bool("has-best flag") ? (json: try r.string("best architecture"), accuracy: try r.double("best accuracy")) : nil
        try r.finish()
        best = loaded
    }

    func derive(state: RunState) throws -> String {
        guard let best else {
            throw PluginError.unsupported("\(Self.id): no architecture has been sampled and trained yet; run at least one step")
        }
        return best.json
    }
}

/// The cell space as the search services describe it: nodes, the candidates per edge that random
/// search may pick (per cell type), and their short names and component ids.
struct CellSpace {
    let nodes: Int
    /// Short names (`sep_conv_3x3`) and component ids of the candidate ops, in α's column order.
    let names: [String], ids: [String]
    /// allowed[cellType][edge]: candidate indices that are not `none` and not removed.
    let allowed: [[[Int]]]

    init(_ search: SearchServices) throws {
        let info = try search.spaceInfo()
        nodes = info.nodes
        var names: [String] = [], ids: [String] = []
        for i in 0..<info.ops {
            guard let id = search.opName(i) else { throw PluginError.internalError("op_name(\(i)) returned NULL for \(info.ops) ops") }
            ids.append(id)
            names.append(Self.shortName(id))
        }
        self.names = names
        self.ids = ids
        var allowed: [[[Int]]] = []
        for t in 0..<2 {
            var perEdge: [[Int]] = []
            for e in 0..<info.edges {
                var ops: [Int] = []
                for o in 0..<info.ops where names[o] != "none" {
                    if try search.opState(cellType: t, edge: e, op: o) != .removed { ops.append(o) }
                }
                perEdge.append(ops)
            }
            allowed.append(perEdge)
        }
        self.allowed = allowed
    }

    /// `espalier.op.sep_conv_3x3/1` → `sep_conv_3x3` (the last dotted part before the revision).
    static func shortName(_ id: String) -> String {
        let base = id.split(separator: "/").first.map(String.init) ?? id
        return String(base.split(separator: ".").last ?? Substring(base))
    }

    /// Edge index of input `j` of node `i` (node i has edges for inputs 0..<2+i, after those of nodes < i).
    static func edge(node i: Int, input j: Int) -> Int { (0..<i).reduce(0) { $0 + 2 + $1 } + j }

    /// A uniform integer in 0..<n from the host's RNG.
    static func uniformInt(_ n: Int, _ host: PluginHost) throws -> Int {
        min(n - 1, Int(try host.randomUniform() * Double(n)))
    }

    /// One cell: per node, 2 distinct inputs uniformly among the predecessors that have a candidate
    /// left, each with an op uniformly among that edge's candidates. Edges as (op index, input).
    func sampleCell(type t: Int, _ host: PluginHost) throws -> [(op: Int, input: Int)] {
        var edges: [(op: Int, input: Int)] = []
        for i in 0..<nodes {
            var inputs = (0..<(2 + i)).filter { !allowed[t][Self.edge(node: i, input: $0)].isEmpty }
            guard inputs.count >= 2 else {
                throw PluginError.invalidArgument("random search: node \(i) of the \(t == 0 ? "normal" : "reduce") cell has \(inputs.count) incoming edge(s) with a candidate other than none left; it needs 2")
            }
            for _ in 0..<2 {
                let j = inputs.remove(at: try Self.uniformInt(inputs.count, host))
                let ops = allowed[t][Self.edge(node: i, input: j)]
                edges.append((ops[try Self.uniformInt(ops.count, host)], j))
            }
        }
        return edges
    }

    /// The children a prediction trains (one step each) to bound any sample: for every op, the
    /// child with that op on every edge (where the op is allowed; else the edge's first allowed),
    /// once with each node's two first inputs and once with its two last.
    func boundingGenotypes() throws -> [String] {
        let ops = Set(allowed.flatMap { $0.flatMap { $0 } }).sorted()
        var out: [String] = []
        for o in ops {
            for lastInputs in [false, true] {
                let cells = try (0..<2).map { t -> [(op: Int, input: Int)] in
                    var edges: [(op: Int, input: Int)] = []
                    for i in 0..<nodes {
                        let inputs = (0..<(2 + i)).filter { !allowed[t][Self.edge(node: i, input: $0)].isEmpty }
                        guard inputs.count >= 2 else {
                            throw PluginError.invalidArgument("random search: node \(i) of the \(t == 0 ? "normal" : "reduce") cell has \(inputs.count) incoming edge(s) with a candidate other than none left; it needs 2")
                        }
                        for j in lastInputs ? Array(inputs.suffix(2)) : Array(inputs.prefix(2)) {
                            let here = allowed[t][Self.edge(node: i, input: j)]
                            edges.append((here.contains(o) ? o : here[0], j))
                        }
                    }
                    return edges
                }
                out.append(json(normal: cells[0], reduce: cells[1]))
            }
        }
        return out
    }

    /// A uniformly sampled architecture as genotype JSON (one line), with the ops' component ids.
    func sampleGenotype(_ host: PluginHost) throws -> String {
        json(normal: try sampleCell(type: 0, host), reduce: try sampleCell(type: 1, host))
    }

    /// Genotype JSON (one line) of two cells' edges, with the ops' component ids.
    func json(normal: [(op: Int, input: Int)], reduce: [(op: Int, input: Int)]) -> String {
        func quoted(_ s: String) -> String {
            "\"" + s.map { $0 == "\"" || $0 == "\\" ? "\\\($0)" : String($0) }.joined() + "\""
        }
        func cell(_ edges: [(op: Int, input: Int)]) -> String {
            "[" + edges.map { "[\(quoted(names[$0.op])), \($0.input)]" }.joined(separator: ", ") + "]"
        }
        let concat = "[" + (2..<(2 + nodes)).map(String.init).joined(separator: ", ") + "]"
        let used = Set((normal + reduce).map(\.op)).sorted()
        let opIDs = used.map { "\(quoted(names[$0])): \(quoted(ids[$0]))" }.joined(separator: ", ")
        return "{\"normal\": \(cell(normal)), \"normal_concat\": \(concat), \"reduce\": \(cell(reduce)), \"reduce_concat\": \(concat), \"op_ids\": {\(opIDs)}}"
    }
}
