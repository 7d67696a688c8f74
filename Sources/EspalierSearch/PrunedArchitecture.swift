// Bonsai-Net's derived network: the hyper-connected network as the search left it. The
// saw-wave pruners are exactly 0 or 1, so the searched network already IS a discrete network:
// every surviving candidate on an edge is summed with weight 1, every surviving inter-cell input
// of a cell is summed with weight 1. `PrunedArchitecture` (OUT/pruned.json) lists, per cell, the
// surviving ops of each edge and the surviving inter-cell inputs (0 = the stem, j = cell j−1);
// `PrunedNetwork` builds it from scratch (a hyper-connected space with `sumOps`: no gates, no α,
// every pruned candidate and input removed, so it holds no parameters and never runs) to train
// and evaluate it (`espalier train-pruned --pruned FILE`). Cells keep their own ops (they are
// distinct), which a DARTS genotype (one normal and one reduction cell) cannot say.

import EspalierCore
import EspalierHost
import Foundation

public struct PrunedArchitecture: Codable, Equatable, Sendable {
    /// The searched space (hyper-connected; cells, nodes, ops, reductions, channels).
    public var space: SearchSpaceDescription
    /// Per cell, per edge: the short names of the surviving ops.
    public var ops: [[[String]]]
    /// Per cell: the surviving inter-cell inputs (0 = the stem, j = the output of cell j−1).
    public var inputs: [[Int]]

    public init(space: SearchSpaceDescription, ops: [[[String]]], inputs: [[Int]]) {
        self.space = space; self.ops = ops; self.inputs = inputs
    }

    public func save(path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try enc.encode(self), to: path)
    }

    public static func load(path: String) throws -> PrunedArchitecture {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EspalierError.data(file: path, problem: "cannot be read (no such file?); a hyper-connected search writes OUT/pruned.json "
                                     + "(espalier search --hyper-connected … --out OUT)")
        }
        do { return try JSONDecoder().decode(PrunedArchitecture.self, from: data) } catch {
            throw EspalierError.config("\(path) is not a pruned architecture (pruned.json of a hyper-connected search): \(error)")
        }
    }

    /// Surviving ops, summed over every edge of every cell.
    public var opCount: Int { ops.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } } }
    public var inputCount: Int { inputs.reduce(0) { $0 + $1.count } }

    /// Checks the lists against the space: one entry per cell, per edge, known op names, inputs in range.
    public func validate() throws {
        guard space.hyperConnected else { throw EspalierError.config("a pruned architecture describes a hyper-connected space (space.hyperConnected)") }
        guard ops.count == space.cells, inputs.count == space.cells else {
            throw EspalierError.config("pruned architecture: \(space.cells) cells, but ops for \(ops.count) and inputs for \(inputs.count)")
        }
        let names = Set(space.opNames)
        for (i, cell) in ops.enumerated() {
            guard cell.count == space.edgesPerCell else { throw EspalierError.config("pruned architecture: cell \(i) lists \(cell.count) edges, the space has \(space.edgesPerCell)") }
            for edge in cell { for n in edge where !names.contains(n) { throw EspalierError.config("pruned architecture: cell \(i) uses '\(n)', not an op of the space (\(space.opNames.joined(separator: ", ")))") } }
            let count = space.hyperSources(cell: i).count
            for j in inputs[i] where j < 0 || j >= count { throw EspalierError.config("pruned architecture: cell \(i) has inputs 0..<\(count), not \(j)") }
        }
    }
}

extension SearchRun {
    /// The network as pruned now: a candidate survives if it is active and its gate lets it
    /// through (evaluation weight > 0), an inter-cell input likewise.
    public func prunedArchitecture() throws -> PrunedArchitecture {
        guard supernet.hyperConnected else { throw EspalierError.config("only a hyper-connected search exports a pruned architecture") }
        let names = supernet.space.opNames
        var ops: [[[String]]] = [], inputs: [[Int]] = []
        for (i, cell) in supernet.cells.enumerated() {
            let w = try supernet.mixingWeights(slot: supernet.slot(ofCell: i), accountant: accountant)
            ops.append(w.enumerated().map { e, row in
                names.indices.filter { o in row[o] > 0 && cell.edges[e].ops[o] != nil && cell.edges[e].states[o] == .active }.map { names[$0] }
            })
            let iw = try supernet.inputWeights(cell: i, accountant: accountant)
            inputs.append(cell.inputStates.indices.filter { cell.inputStates[$0] == .active && cell.inputs[$0] != nil && iw[$0] > 0 })
        }
        var space = supernet.space
        space.auxiliaryCells = []
        space.sumOps = false
        return PrunedArchitecture(space: space, ops: ops, inputs: inputs)
    }

    /// OUT/pruned.json for a hyper-connected search.
    func writePrunedArchitecture() throws -> [String] {
        guard supernet.hyperConnected, let dir = outDirectory, !accountant.isDryRun else { return [] }
        let path = (dir as NSString).appendingPathComponent("pruned.json")
        try prunedArchitecture().save(path: path)
        return [path]
    }
}

/// The pruned network of a hyper-connected search, built from scratch: survivors summed with
/// weight 1, everything else removed (no parameters, never run).
public final class PrunedNetwork: Classifier, SavedModel {
    public let architecture: PrunedArchitecture
    let net: Supernet
    let ownerPrefix: String

    /// `space` overrides (e.g. channels) come from `architecture.space`; the gate is unused.
    public init(_ architecture: PrunedArchitecture, registry: PluginRegistry, context: HostContext, seed: UInt64) throws {
        try architecture.validate()
        self.architecture = architecture
        ownerPrefix = context.accountant.currentOwnerPath
        var space = architecture.space
        space.sumOps = true
        space.auxiliaryCells = []
        space.scaleParameterFree = false
        net = try Supernet(space: space, registry: registry, context: context, gateID: "espalier.gate.softmax/1", seed: seed)
        let names = space.opNames
        for (i, cell) in architecture.ops.enumerated() {
            for (e, keep) in cell.enumerated() {
                for (o, n) in names.enumerated() where !keep.contains(n) { try net.setOpState(slot: i, edge: e, op: o, .removed) }
            }
            for j in 0..<space.hyperSources(cell: i).count where !architecture.inputs[i].contains(j) {
                try net.setInputState(cell: i, input: j, .removed)
            }
        }
    }

    public var parameters: [Parameter] { net.weights }
    public var buffers: [Tensor] { net.buffers }
    public var parameterCount: Int { net.weightCount }
    public func logits(_ g: Graph, _ x: Variable) throws -> Variable { try net.logits(g, x) }

    /// model.safetensors: every weight and batch-norm statistic, and the architecture (with the
    /// space it was trained at) as metadata "espalier.pruned".
    public func save(path: String, extraMetadata: [String: String] = [:]) throws {
        try writeModel(path: path, key: "espalier.pruned", description: architecture, extraMetadata: extraMetadata)
    }

    /// Rebuilds the pruned network saved in `file` (read from `path`) under owner "model" and loads its tensors.
    static func load(_ file: SafeTensorsFile, path: String, registry: PluginRegistry, context: HostContext) throws -> (PrunedNetwork, [String: String]) {
        let arch: PrunedArchitecture
        do { arch = try JSONDecoder().decode(PrunedArchitecture.self, from: Data((file.metadata["espalier.pruned"] ?? "").utf8)) } catch {
            throw EspalierError.data(file: path, problem: "damaged pruned-network description: \(error)")
        }
        let net = try context.accountant.withOwner("model") { try PrunedNetwork(arch, registry: registry, context: context, seed: 0) }
        try net.loadTensors(from: file)
        return (net, file.metadata)
    }
}
