// A DARTS genotype: for each cell type, two (op, input) edges per intermediate node and the list
// of states concatenated into the output. JSON mirrors DARTS's namedtuple with tuples as arrays:
//   {"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], …], "normal_concat": [2, 3, 4, 5],
//    "reduce": […], "reduce_concat": […], "op_ids": {"sep_conv_3x3": "espalier.op.sep_conv_3x3/1"}}
// Input index 0 is c_{k-2}, 1 is c_{k-1}, 2+j is intermediate node j; edges 2i and 2i+1 feed node i.
// `derive` is DARTS's `_parse` (model_search.py): per node, the two incoming edges with the
// largest max weight over ops other than `none` (stable order: ties keep the lower input),
// strongest first, each with its argmax op other than `none` (ties: the earlier op).
// `dot` follows DARTS's visualize.py; `writePictures` renders SVG when Graphviz is installed.
// Optional `normal_node_sizes` / `reduce_node_sizes` (GSparsity, where any number of ops survive
// per edge and per node): the number of (op, input) edges of each intermediate node, in order;
// absent = 2 per node (DARTS). A node with no edge is zero.
// Optional `per_cell` (FiGS, whose cells are searched independently and whose ops keep learned
// widths): one entry per cell of the network, in order, each with its own edges, node sizes,
// concat list and per-edge op settings (`op_settings`, parallel to `edges`; {} = the search's),
// the cell's channel count C at search time and whether it reduces, and optionally per edge the
// widths of the op's channel masks (`channel_widths`, parallel to `edges`, by the mask's logits
// name, e.g. {"keep.logits": 5}: the op is built at those widths with no masks). A
// network built from it has exactly these cells; `normal`/`reduce` then describe the first cell
// of each type (pictures, older readers). Files without it load as before.
// Optional `node_aggregator` ("sum", the default, or "concat": FiGS §3.3's concat aggregator,
// node = BN(conv1×1(concat of the node's op outputs)) instead of their sum), and per cell
// optional `out_channels` (parallel to `edges`: each op's output width, which only the concat
// aggregator lets differ from the cell's C).
// Optional `settings` (written by `espalier search`): every selected component's resolved
// parameters, defaults included, by instance key — the component id, `id#2` for a component
// selected a second time — e.g. {"org.example.op.swish/1": {"beta_init": "0.25"}}; `espalier
// train` builds the ops with them (a `per_cell` entry's `op_settings` override them per edge).
// Files without it load as before (the ops' defaults).
// Not here: Python-repr genotypes (`Genotype(normal=[(…)], normal_concat=range(2, 6), …)`).

import EspalierCore
import Foundation

/// How an intermediate node combines the outputs of its ops: their sum (DARTS), or FiGS's concat
/// aggregator — the outputs concatenated along channels, then a 1×1 convolution back to the
/// cell's C channels and batch norm, which lets each op have its own output width.
public enum NodeAggregator: String, Codable, CaseIterable, Sendable { case sum, concat }

public struct Genotype: Codable, Equatable, Sendable {
    /// One kept edge: the op on it and the state it reads (JSON: `["op", input]`).
    public struct Edge: Codable, Equatable, Hashable, Sendable, CustomStringConvertible {
        public var op: String
        public var input: Int
        public init(_ op: String, _ input: Int) { self.op = op; self.input = input }

        public init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            op = try c.decode(String.self)
            input = try c.decode(Int.self)
            guard c.isAtEnd else {
                throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath,
                                                        debugDescription: "an edge is [\"op\", input]: two elements, found more"))
            }
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.unkeyedContainer()
            try c.encode(op)
            try c.encode(input)
        }

        public var description: String { "(\(op), \(input))" }
    }

    public enum CellType: String, CaseIterable, Sendable { case normal, reduce }

    /// One cell of a network whose cells differ (`per_cell`): its edges, node sizes, concat list,
    /// the settings of each edge's op (parallel to `edges`; empty = the op's defaults), the
    /// cell's channel count C when it was searched, and whether it is a reduction cell.
    public struct CellGene: Codable, Equatable, Sendable {
        public var reduction: Bool
        public var channels: Int
        public var edges: [Edge]
        public var nodeSizes: [Int]
        public var concat: [Int]
        public var opSettings: [[String: String]]
        /// Each edge's op output width (parallel to `edges`); nil = C for every op. Widths other
        /// than C need the concat aggregator.
        public var outChannels: [Int]? = nil
        /// Each edge's op's channel-mask widths (parallel to `edges`; by the mask's logits name, {}
        /// for an op without masks): the op is built at them (`channel_width`) with no masks.
        /// nil = every op as searched.
        public var channelWidths: [[String: Int]]? = nil

        enum CodingKeys: String, CodingKey {
            case reduction, channels, edges, concat
            case nodeSizes = "node_sizes"
            case opSettings = "op_settings"
            case outChannels = "out_channels"
            case channelWidths = "channel_widths"
        }

        public init(reduction: Bool, channels: Int, edges: [Edge], nodeSizes: [Int], concat: [Int], opSettings: [[String: String]]) {
            self.reduction = reduction; self.channels = channels; self.edges = edges
            self.nodeSizes = nodeSizes; self.concat = concat; self.opSettings = opSettings
        }

        /// The intermediate node each edge feeds, in edge order.
        public var nodeIndices: [Int] { nodeSizes.enumerated().flatMap { i, n in Array(repeating: i, count: max(n, 0)) } }
    }

    public var normal: [Edge]
    public var normalConcat: [Int]
    public var reduce: [Edge]
    public var reduceConcat: [Int]
    /// Short op name → component id (e.g. "sep_conv_3x3" → "espalier.op.sep_conv_3x3/1"), so a
    /// trainer can rebuild the ops from plugins. Optional in the JSON.
    public var opIDs: [String: String]?
    /// Edges per intermediate node (any number, GSparsity); nil = 2 per node.
    public var normalNodeSizes: [Int]?
    public var reduceNodeSizes: [Int]?
    /// One entry per network cell (FiGS); nil = every cell of a type is `normal` / `reduce`.
    public var perCell: [CellGene]?
    /// How nodes combine their ops; nil = sum.
    public var aggregator: NodeAggregator?
    /// The search's resolved component settings by instance key (id, `id#2`); nil in older files.
    public var settings: [String: [String: String]]?

    /// The settings an op of this genotype is built with: the search's for its id, then a
    /// per-edge `op_settings` entry (which wins).
    public func opSettings(id: String, edge: [String: String] = [:]) -> [String: String] {
        (settings?[id] ?? [:]).merging(edge) { _, perEdge in perEdge }
    }
    /// The aggregator in effect (nil reads as sum).
    public var nodeAggregator: NodeAggregator { aggregator ?? .sum }

    enum CodingKeys: String, CodingKey {
        case normal
        case normalConcat = "normal_concat"
        case reduce
        case reduceConcat = "reduce_concat"
        case opIDs = "op_ids"
        case normalNodeSizes = "normal_node_sizes"
        case reduceNodeSizes = "reduce_node_sizes"
        case perCell = "per_cell"
        case aggregator = "node_aggregator"
        case settings
    }

    public init(normal: [Edge], normalConcat: [Int], reduce: [Edge], reduceConcat: [Int], opIDs: [String: String]? = nil) {
        self.normal = normal
        self.normalConcat = normalConcat
        self.reduce = reduce
        self.reduceConcat = reduceConcat
        self.opIDs = opIDs
    }

    public func edges(_ cell: CellType) -> [Edge] { cell == .normal ? normal : reduce }
    public func concat(_ cell: CellType) -> [Int] { cell == .normal ? normalConcat : reduceConcat }
    /// Intermediate nodes of a cell type (two edges each unless node sizes are given).
    public func nodes(_ cell: CellType) -> Int { nodeSizes(cell).count }
    /// Edges of each intermediate node: the node sizes, or 2 each.
    public func nodeSizes(_ cell: CellType) -> [Int] {
        (cell == .normal ? normalNodeSizes : reduceNodeSizes) ?? Array(repeating: 2, count: edges(cell).count / 2)
    }
    /// The intermediate node each edge feeds, in edge order.
    public func nodeIndices(_ cell: CellType) -> [Int] {
        nodeSizes(cell).enumerated().flatMap { i, n in Array(repeating: i, count: max(n, 0)) }
    }

    // MARK: Derivation

    /// Number of mixed edges in a cell of `nodes` intermediate nodes (2 + 3 + … ; 14 for 4 nodes).
    public static func edgeCount(nodes: Int) -> Int { nodes * (nodes + 3) / 2 }

    /// The DARTS rule on one cell type's weights, laid out (edges, ops) node by node (node 0 has
    /// edges 0, 1; node 1 has 2, 3, 4; …), e.g. softmax(α). Returns the kept edges (per node,
    /// strongest first) and the concat list [2, …, nodes+1]. `excluding` (if among `opNames`) is
    /// never chosen and does not count in an edge's strength.
    /// Throws `invalidArgument` on a weight matrix of the wrong size or holding NaN, or if no op is left.
    public static func derive(weights: [[Float]], opNames: [String], nodes: Int = 4,
                              excluding: String = "none") throws -> ([Edge], [Int]) {
        guard nodes >= 1 else { throw EspalierError.invalidArgument("a cell needs at least one intermediate node, got \(nodes)") }
        let expected = edgeCount(nodes: nodes)
        guard weights.count == expected else {
            throw EspalierError.invalidArgument("genotype derivation: \(weights.count) rows of weights, but a cell of \(nodes) nodes "
                                                + "has \(expected) edges")
        }
        for (e, row) in weights.enumerated() {
            guard row.count == opNames.count else {
                throw EspalierError.invalidArgument("genotype derivation: edge \(e) has \(row.count) weights for \(opNames.count) ops \(opNames)")
            }
            if row.contains(where: { $0.isNaN }) {
                throw EspalierError.invalidArgument("genotype derivation: edge \(e) has a NaN weight (\(row)); the search diverged")
            }
        }
        let candidates = opNames.indices.filter { opNames[$0] != excluding }
        guard !candidates.isEmpty else {
            throw EspalierError.invalidArgument("genotype derivation: no op other than '\(excluding)' among \(opNames)")
        }
        // Argmax over the candidate ops; the first wins a tie (DARTS's strict `>`).
        func best(_ row: [Float]) -> Int {
            var k = candidates[0]
            for c in candidates.dropFirst() where row[c] > row[k] { k = c }
            return k
        }
        var gene: [Edge] = []
        var start = 0
        for i in 0..<nodes {
            let incoming = 2 + i
            let rows = Array(weights[start..<(start + incoming)])
            let strength = rows.map { $0[best($0)] }
            // Stable sort by decreasing strength: ties keep the lower input first (Python's sorted).
            let ranked = (0..<incoming).sorted { a, b in strength[a] != strength[b] ? strength[a] > strength[b] : a < b }
            for j in ranked.prefix(2) { gene.append(Edge(opNames[best(rows[j])], j)) }
            start += incoming
        }
        return (gene, Array(2..<(2 + nodes)))
    }

    /// Both cell types at once.
    public static func derive(normal: [[Float]], reduce: [[Float]], opNames: [String], nodes: Int = 4,
                              excluding: String = "none", opIDs: [String: String]? = nil) throws -> Genotype {
        let (n, nc) = try derive(weights: normal, opNames: opNames, nodes: nodes, excluding: excluding)
        let (r, rc) = try derive(weights: reduce, opNames: opNames, nodes: nodes, excluding: excluding)
        return Genotype(normal: n, normalConcat: nc, reduce: r, reduceConcat: rc, opIDs: opIDs)
    }

    // MARK: Validation

    /// Problems with the structure, one line each (empty when valid).
    public func problems() -> [String] {
        var out: [String] = []
        for cell in CellType.allCases {
            let edges = edges(cell)
            let key = cell.rawValue
            let sizes = cell == .normal ? normalNodeSizes : reduceNodeSizes
            if let sizes {
                if sizes.isEmpty { out.append("\"\(key)_node_sizes\" is empty; give the number of edges of each intermediate node") }
                if sizes.contains(where: { $0 < 0 }) { out.append("\"\(key)_node_sizes\" \(sizes) has a negative size") }
                if let sum = Genotype.checkedSum(sizes), sum != edges.count {
                    out.append("\"\(key)_node_sizes\" \(sizes) adds up to \(sum) edges, but \"\(key)\" has \(edges.count)")
                } else if Genotype.checkedSum(sizes) == nil, !sizes.contains(where: { $0 < 0 }) {
                    out.append("\"\(key)_node_sizes\" \(sizes) adds up to more edges than can exist, but \"\(key)\" has \(edges.count)")
                }
            } else if edges.isEmpty {
                out.append("\"\(key)\" has no edges (a cell needs 2 per intermediate node)")
            } else if edges.count % 2 != 0 {
                out.append("\"\(key)\" has \(edges.count) edges; a cell has exactly 2 per intermediate node, so the count must be even")
            }
            let nodes = self.nodes(cell)
            // Node sizes that do not add up to the edges (negative, past Int.max, or huge) would trap
            // or allocate their sum below.
            let nodeOf = sizes == nil || Genotype.checkedSum(sizes!) == edges.count ? nodeIndices(cell) : []
            for (k, e) in edges.enumerated() {
                let node = k < nodeOf.count ? nodeOf[k] : k / 2
                if e.op.trimmingCharacters(in: .whitespaces).isEmpty {
                    out.append("\"\(key)\" edge \(k) (node \(node)) has an empty op name")
                }
                if e.input < 0 || e.input >= 2 + node {
                    out.append("\"\(key)\" edge \(k) reads input \(e.input), but node \(node) can only read 0..<\(2 + node) "
                               + "(0 = c_{k-2}, 1 = c_{k-1}, 2+j = node j before it)")
                }
            }
            let concat = concat(cell)
            let concatKey = "\(key)_concat"
            if concat.isEmpty { out.append("\"\(concatKey)\" is empty; list the states joined into the output, e.g. [2, 3, 4, 5]") }
            for c in concat where c < 0 || c >= 2 + nodes {
                out.append("\"\(concatKey)\" names state \(c), but the \"\(key)\" cell has states 0..<\(2 + nodes)")
            }
            if Set(concat).count != concat.count { out.append("\"\(concatKey)\" \(concat) repeats a state") }
        }
        for (i, cell) in (perCell ?? []).enumerated() {
            let key = "\"per_cell\"[\(i)]"
            if cell.channels < 1 { out.append("\(key) has channels \(cell.channels); C must be ≥ 1") }
            if cell.nodeSizes.isEmpty { out.append("\(key) has no \"node_sizes\"; give the number of edges of each intermediate node") }
            if cell.nodeSizes.contains(where: { $0 < 0 }) { out.append("\(key) \"node_sizes\" \(cell.nodeSizes) has a negative size") }
            let sum = Genotype.checkedSum(cell.nodeSizes)
            if sum != cell.edges.count, !cell.nodeSizes.contains(where: { $0 < 0 }) {
                out.append("\(key) \"node_sizes\" \(cell.nodeSizes) adds up to \(sum.map { "\($0) edges" } ?? "more edges than can exist"), but it has \(cell.edges.count)")
            }
            if cell.opSettings.count != cell.edges.count {
                out.append("\(key) has \(cell.opSettings.count) \"op_settings\" for \(cell.edges.count) edges; give one object (possibly {}) per edge")
            }
            let nodeOf = sum == cell.edges.count ? cell.nodeIndices : []
            for (k, e) in cell.edges.enumerated() {
                let node = k < nodeOf.count ? nodeOf[k] : 0
                if e.op.trimmingCharacters(in: .whitespaces).isEmpty { out.append("\(key) edge \(k) has an empty op name") }
                if e.input < 0 || e.input >= 2 + node {
                    out.append("\(key) edge \(k) reads input \(e.input), but node \(node) can only read 0..<\(2 + node)")
                }
            }
            if cell.concat.isEmpty { out.append("\(key) \"concat\" is empty") }
            for c in cell.concat where c < 0 || c >= 2 + cell.nodeSizes.count {
                out.append("\(key) \"concat\" names state \(c), but the cell has states 0..<\(2 + cell.nodeSizes.count)")
            }
            if Set(cell.concat).count != cell.concat.count { out.append("\(key) \"concat\" \(cell.concat) repeats a state") }
            if let widths = cell.channelWidths {
                if widths.count != cell.edges.count {
                    out.append("\(key) has \(widths.count) \"channel_widths\" for \(cell.edges.count) edges; give one object (possibly {}) per edge")
                }
                for (k, w) in widths.enumerated() {
                    for mask in w.keys.sorted() where w[mask]! < 1 {
                        out.append("\(key) edge \(k) \"channel_widths\" gives the mask '\(mask)' the width \(w[mask]!); a kept mask keeps at least 1 channel")
                    }
                }
            }
            if let widths = cell.outChannels {
                if widths.count != cell.edges.count {
                    out.append("\(key) has \(widths.count) \"out_channels\" for \(cell.edges.count) edges; give one width per edge")
                }
                if widths.contains(where: { $0 < 1 }) { out.append("\(key) \"out_channels\" \(widths) has a width below 1") }
                if nodeAggregator == .sum, widths.contains(where: { $0 != cell.channels }) {
                    out.append("\(key) \"out_channels\" \(widths) differ from the cell's C=\(cell.channels), but summed nodes need every op at C; "
                               + "set \"node_aggregator\": \"concat\" (FiGS's concat aggregator) or drop \"out_channels\"")
                }
            }
        }
        if let cells = perCell, cells.isEmpty { out.append("\"per_cell\" is empty; omit it, or give one entry per cell") }
        if let ids = opIDs {
            for (k, v) in ids.sorted(by: { $0.key < $1.key }) {
                if k.isEmpty { out.append("\"op_ids\" has an empty op name") }
                if v.isEmpty { out.append("\"op_ids\" maps '\(k)' to an empty component id") }
            }
        }
        return out
    }

    /// The sum of node sizes, or nil if one is negative or the sum overflows.
    static func checkedSum(_ sizes: [Int]) -> Int? {
        var total = 0
        for n in sizes {
            guard n >= 0 else { return nil }
            let (t, overflow) = total.addingReportingOverflow(n)
            if overflow { return nil }
            total = t
        }
        return total
    }

    /// Throws `invalidArgument` listing every problem (see `problems()`).
    public func validate() throws {
        let p = problems()
        if !p.isEmpty { throw EspalierError.invalidArgument("invalid genotype: " + p.joined(separator: "; ")) }
    }

    // MARK: JSON

    /// Parses and validates genotype JSON; `file` names the source in errors.
    public static func decode(_ data: Data, file: String) throws -> Genotype {
        let g: Genotype
        do {
            g = try JSONDecoder().decode(Genotype.self, from: data)
        } catch {
            throw EspalierError.data(file: file, problem: "not a valid genotype JSON (\(IOJSON.describe(error))); expected "
                                     + "{\"normal\": [[\"op\", input], …], \"normal_concat\": [2, 3, 4, 5], \"reduce\": […], \"reduce_concat\": […]}")
        }
        let p = g.problems()
        if !p.isEmpty { throw EspalierError.data(file: file, problem: "invalid genotype: " + p.joined(separator: "; ")) }
        return g
    }

    /// Reads and validates a genotype JSON file.
    public static func load(path: String) throws -> Genotype {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw EspalierError.data(file: path, problem: "no such genotype file; check the path, or run a search to produce one")
        }
        guard !isDir.boolValue else {
            throw EspalierError.data(file: path, problem: "is a directory; pass the genotype JSON file inside it")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EspalierError.data(file: path, problem: "cannot be read; check its permissions")
        }
        return try decode(data, file: path)
    }

    /// Deterministic JSON in DARTS's layout (keys in namedtuple order, one line per cell type).
    public func jsonText() -> String {
        func edges(_ e: [Edge]) -> String { "[" + e.map { "[\(IOJSON.quoted($0.op)), \($0.input)]" }.joined(separator: ", ") + "]" }
        func ints(_ a: [Int]) -> String { "[" + a.map(String.init).joined(separator: ", ") + "]" }
        var lines = [
            "  \"normal\": \(edges(normal))",
            "  \"normal_concat\": \(ints(normalConcat))",
            "  \"reduce\": \(edges(reduce))",
            "  \"reduce_concat\": \(ints(reduceConcat))",
        ]
        if let ids = opIDs {
            let body = ids.keys.sorted().map { "\(IOJSON.quoted($0)): \(IOJSON.quoted(ids[$0]!))" }.joined(separator: ", ")
            lines.append("  \"op_ids\": {\(body)}")
        }
        if let n = normalNodeSizes { lines.append("  \"normal_node_sizes\": \(ints(n))") }
        if let r = reduceNodeSizes { lines.append("  \"reduce_node_sizes\": \(ints(r))") }
        if let a = aggregator { lines.append("  \"node_aggregator\": \(IOJSON.quoted(a.rawValue))") }
        func widths(_ w: [String: Int]) -> String {
            "{" + w.keys.sorted().map { "\(IOJSON.quoted($0)): \(w[$0]!)" }.joined(separator: ", ") + "}"
        }
        func settings(_ s: [String: String]) -> String {
            "{" + s.keys.sorted().map { "\(IOJSON.quoted($0)): \(IOJSON.quoted(s[$0]!))" }.joined(separator: ", ") + "}"
        }
        if let all = self.settings {
            let body = all.keys.sorted().map { "    \(IOJSON.quoted($0)): \(settings(all[$0]!))" }
            lines.append("  \"settings\": {" + (body.isEmpty ? "}" : "\n" + body.joined(separator: ",\n") + "\n  }"))
        }
        if let cells = perCell {
            let body = cells.map { c in
                "    {\"reduction\": \(c.reduction), \"channels\": \(c.channels), \"edges\": \(edges(c.edges)), \"node_sizes\": \(ints(c.nodeSizes)), "
                    + "\"concat\": \(ints(c.concat)), \"op_settings\": [\(c.opSettings.map(settings).joined(separator: ", "))]"
                    + (c.outChannels.map { ", \"out_channels\": \(ints($0))" } ?? "")
                    + (c.channelWidths.map { ", \"channel_widths\": [\($0.map(widths).joined(separator: ", "))]" } ?? "") + "}"
            }
            lines.append("  \"per_cell\": [\n" + body.joined(separator: ",\n") + "\n  ]")
        }
        return "{\n" + lines.joined(separator: ",\n") + "\n}\n"
    }

    /// Writes `jsonText()` atomically.
    public func save(path: String) throws {
        try AtomicFile.write(jsonText(), to: path)
    }

    // MARK: Pictures

    /// Graphviz DOT of one cell, as DARTS's visualize.py draws it: inputs c_{k-2}, c_{k-1},
    /// intermediate nodes 0…n-1, edges labelled with their op, the concatenated nodes → c_{k}.
    public func dot(cell: CellType) -> String {
        let edges = edges(cell)
        let steps = nodes(cell)
        let nodeOf = nodeIndices(cell)
        func q(_ s: String) -> String {
            "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        func state(_ j: Int) -> String { j == 0 ? "c_{k-2}" : j == 1 ? "c_{k-1}" : String(j - 2) }
        var s = "digraph \(cell.rawValue) {\n"
        s += "  rankdir=LR;\n"
        s += "  node [style=filled, shape=rect, align=center, fontsize=20, height=0.5, width=0.5, penwidth=2, fontname=\"times\"];\n"
        s += "  edge [fontsize=20, fontname=\"times\"];\n"
        s += "  \(q("c_{k-2}")) [fillcolor=darkseagreen2];\n"
        s += "  \(q("c_{k-1}")) [fillcolor=darkseagreen2];\n"
        for i in 0..<steps { s += "  \(q(String(i))) [fillcolor=lightblue];\n" }
        for (k, e) in edges.enumerated() {
            s += "  \(q(state(e.input))) -> \(q(String(k < nodeOf.count ? nodeOf[k] : k / 2))) [label=\(q(e.op)), fillcolor=gray];\n"
        }
        s += "  \(q("c_{k}")) [fillcolor=palegoldenrod];\n"
        for c in concat(cell) { s += "  \(q(state(c))) -> \(q("c_{k}")) [fillcolor=gray];\n" }
        s += "}\n"
        return s
    }

    /// Writes `<basename>_normal.dot` and `<basename>_reduce.dot` into `directory` (created if
    /// needed), and `.svg` renderings of them when Graphviz's `dot` is on PATH. Returns the paths
    /// written. A missing or failing `dot` only means no SVG; it is never an error.
    @discardableResult
    public func writePictures(directory: String, basename: String = "genotype") throws -> [String] {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw EspalierError.data(file: directory, problem: "cannot create the directory for genotype pictures "
                                     + "(\(error.localizedDescription)); choose another output folder")
        }
        let dotProgram = Genotype.graphvizDot()
        var written: [String] = []
        for cell in CellType.allCases {
            let base = (directory as NSString).appendingPathComponent("\(basename)_\(cell.rawValue)")
            let text = dot(cell: cell)
            try AtomicFile.write(text, to: base + ".dot")
            written.append(base + ".dot")
            if let program = dotProgram, let svg = Genotype.render(dotFile: base + ".dot", program: program) {
                try AtomicFile.write(svg, to: base + ".svg")
                written.append(base + ".svg")
            }
        }
        return written
    }

    /// The path of Graphviz's `dot` found through PATH, or nil.
    public static func graphvizDot(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        findExecutable("dot", searchPath: environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
    }

    /// The first executable file called `name` in the colon-separated `searchPath` (an empty entry is ".").
    static func findExecutable(_ name: String, searchPath: String) -> String? {
        for dir in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = ((dir.isEmpty ? "." : String(dir)) as NSString).appendingPathComponent(name)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDir), !isDir.boolValue,
               FileManager.default.isExecutableFile(atPath: candidate) {
                return candidate
            }
        }
        return nil
    }

    /// The picture of `cell` as a PNG (`dot -Tpng`), or nil when Graphviz's `dot` is missing or fails.
    public func png(cell: CellType) -> [UInt8]? {
        guard let program = Genotype.graphvizDot() else { return nil }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-cell-\(UUID().uuidString).dot").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        guard (try? AtomicFile.write(dot(cell: cell), to: path)) != nil else { return nil }
        return Genotype.render(dotFile: path, program: program, format: "png").map { Array($0) }
    }

    /// `dot -T<format>` of the DOT file at `path` (read from the file, so no stdin pipe can break), or nil if the program fails.
    static func render(dotFile path: String, program: String, format: String = "svg") -> Data? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = ["-T" + format, path]
        let output = Pipe()
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = output
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        let rendered = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationReason == .exit, p.terminationStatus == 0, !rendered.isEmpty else { return nil }
        return rendered
    }
}
