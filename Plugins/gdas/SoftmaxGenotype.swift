// The DARTS rule on softmax(α), read through the search services: what a sampled gate's search
// derives (GDAS and ProxylessNAS rank by the architecture distribution, not by the one-hot
// weights of an evaluation forward, on which every edge would tie). Masked and removed
// candidates are left out of the softmax. Output: genotype JSON as the host reads it.
// (The same file is in Plugins/proxyless: plugins see only the SDK, which has no genotype type.)

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

enum SoftmaxGenotype {
    /// softmax(α) of one cell type, (edges, ops), over the active candidates of each edge.
    static func probabilities(_ search: SearchServices, cellType: Int, edges: Int, ops: Int) throws -> [[Double]] {
        let view = try search.archView(cellType: cellType).logits
        guard let a = view.data, view.count == edges * ops else {
            throw PluginError.shape("arch view of cell type \(cellType) has shape \(view.shape), expected (\(edges), \(ops))")
        }
        return try (0..<edges).map { e in
            let active = try (0..<ops).map { try search.opState(cellType: cellType, edge: e, op: $0) == .active }
            let m = (0..<ops).filter { active[$0] }.map { Double(a[e * ops + $0]) }.max() ?? 0
            var p = (0..<ops).map { active[$0] ? exp(Double(a[e * ops + $0]) - m) : 0 }
            let s = p.reduce(0, +)
            if s > 0 { p = p.map { $0 / s } }
            return p
        }
    }

    /// Per node, the two incoming edges with the largest max weight over ops other than `none`
    /// (ties keep the lower input), strongest first, each with its argmax op other than `none`.
    static func cell(_ w: [[Double]], names: [String], nodes: Int) throws -> [(op: String, input: Int)] {
        let candidates = names.indices.filter { names[$0] != "none" }
        guard !candidates.isEmpty else { throw PluginError.invalidArgument("no candidate op other than 'none' among \(names)") }
        func best(_ row: [Double]) -> Int {
            var k = candidates[0]
            for c in candidates.dropFirst() where row[c] > row[k] { k = c }
            return k
        }
        var gene: [(String, Int)] = []
        var start = 0
        for i in 0..<nodes {
            let incoming = 2 + i
            guard start + incoming <= w.count else { throw PluginError.shape("\(w.count) edges are too few for \(nodes) nodes") }
            let rows = Array(w[start..<(start + incoming)])
            let strength = rows.map { $0[best($0)] }
            let ranked = (0..<incoming).sorted { a, b in strength[a] != strength[b] ? strength[a] > strength[b] : a < b }
            for j in ranked.prefix(2) { gene.append((names[best(rows[j])], j)) }
            start += incoming
        }
        return gene
    }

    /// The genotype JSON of the running search: {"normal": [["op", input], …], "normal_concat": […], "reduce": …, "op_ids": {…}}.
    static func derive(_ host: PluginHost) throws -> String {
        guard let search = host.search else { throw PluginError.unsupported("derive needs a running search") }
        let info = try search.spaceInfo()
        var ids: [String] = []
        for i in 0..<info.ops {
            guard let id = search.opName(i) else { throw PluginError.internalError("the host names no op \(i) of \(info.ops)") }
            ids.append(id)
        }
        let names = ids.map(shortName)
        func quote(_ s: String) -> String {
            var out = "\""
            for c in s { if c == "\"" || c == "\\" { out.append("\\") }; out.append(c) }
            return out + "\""
        }
        var parts: [String] = []
        let concat = "[" + (2..<(2 + info.nodes)).map(String.init).joined(separator: ", ") + "]"
        for (type, key) in [(0, "normal"), (1, "reduce")] {
            let cellType = min(type, info.cellTypes - 1)
            let w = try probabilities(search, cellType: cellType, edges: info.edges, ops: info.ops)
            let edges = try cell(w, names: names, nodes: info.nodes)
            parts.append("\(quote(key)): [" + edges.map { "[\(quote($0.op)), \($0.input)]" }.joined(separator: ", ") + "]")
            parts.append("\(quote(key + "_concat")): \(concat)")
        }
        parts.append("\"op_ids\": {" + zip(names, ids).map { "\(quote($0)): \(quote($1))" }.joined(separator: ", ") + "}")
        return "{" + parts.joined(separator: ", ") + "}"
    }

    /// "espalier.op.sep_conv_3x3/1" → "sep_conv_3x3" (the host's short-name rule).
    static func shortName(_ id: String) -> String {
        let base = id.split(separator: "/").first.map(String.init) ?? id
        return String(base.split(separator: ".").last ?? Substring(base))
    }
}
