// One edge of a search cell: its candidate ops, each candidate's state (active, masked, removed),
// the merged ops standing for several candidates, and the scales and concat blocks candidates may
// carry. Not the mixing itself: SearchCell weighs and sums (or concatenates) the edges of a node.

import EspalierCore
import EspalierHost
import Foundation

/// Where a candidate stands.
public enum OpState: Int32, Codable, Sendable { case active = 0, masked = 1, removed = 2 }

/// One edge: a candidate op instance per column of α (nil for `none`, which contributes zero
/// and is never run, and for candidates a merged op stands for), each candidate's state, and the
/// merged ops on the edge with the columns each covers.
final class MixedEdge {
    var ops: [PluginOp?]
    var states: [OpState]
    var merged: [(op: PluginOp, columns: [Int])]
    /// Learnable output scales (shape [1]) of parameter-free candidates (`scaleParameterFree`); nil elsewhere.
    var scales: [Parameter?]
    /// Concat aggregator: each candidate's block W_t (C_node, C_t, 1, 1) of its node's 1×1
    /// convolution (nil for `none`, removed candidates and the sum aggregator).
    var concatColumns: [Parameter?]
    init(ops: [PluginOp?], merged: [(op: PluginOp, columns: [Int])] = [], scales: [Parameter?]? = nil, concatColumns: [Parameter?]? = nil) {
        self.ops = ops; self.merged = merged
        self.scales = scales ?? Array(repeating: nil, count: ops.count)
        self.concatColumns = concatColumns ?? Array(repeating: nil, count: ops.count)
        states = Array(repeating: .active, count: ops.count)
    }

    /// Candidate `o`'s output on x, times its scale when it has one: (N, C, H, W) → (N, C, H', W').
    func output(_ g: Graph, _ o: Int, _ x: Variable, state: RunState) throws -> Variable {
        let y = try ops[o]!(g, x, state: state)
        guard let s = scales[o] else { return y }
        return try g.scale(y, byElement: 0, of: g.param(s))
    }
}

/// The candidate columns a merged op stands for: its `covers` parameter, by short name.
func mergedColumns(_ comp: Component, settings: [String: String], space: SearchSpaceDescription) throws -> [Int] {
    guard comp.hasMixed else { throw EspalierError.config("\(comp.id) cannot stand for several candidates: it has no build_mixed") }
    guard let spec = comp.params.first(where: { $0.name == "covers" }) else {
        throw EspalierError.config("\(comp.id) has no 'covers' parameter naming the candidates it stands for")
    }
    let names = (settings["covers"] ?? spec.defaultValue).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    return try names.map { n in
        guard let i = space.opNames.firstIndex(of: n) else {
            throw EspalierError.config("\(comp.id) covers '\(n)', which is not a candidate of this space (\(space.opNames.joined(separator: ", ")))")
        }
        return i
    }
}
