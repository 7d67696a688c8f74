// Genotypes: the DARTS derivation rule on hand-set weights (`none` largest but excluded,
// strongest edge first, ties to the lower input and the earlier op) and on a tie-heavy matrix
// whose answer came from DARTS's own `_parse`; JSON in DARTS's layout (round trip, DARTS_V2 as
// published, op ids); load errors naming the file; DOT text; pictures (SVG when `dot` exists).

import EspalierCore
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class GenotypeTests: XCTestCase {
    typealias Edge = Genotype.Edge
    let primitives = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                      "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "espalier-genotype-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func path(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }

    /// DARTS_V2 from DARTS's genotypes.py.
    let dartsV2 = Genotype(
        normal: [Edge("sep_conv_3x3", 0), Edge("sep_conv_3x3", 1), Edge("sep_conv_3x3", 0), Edge("sep_conv_3x3", 1),
                 Edge("sep_conv_3x3", 1), Edge("skip_connect", 0), Edge("skip_connect", 0), Edge("dil_conv_3x3", 2)],
        normalConcat: [2, 3, 4, 5],
        reduce: [Edge("max_pool_3x3", 0), Edge("max_pool_3x3", 1), Edge("skip_connect", 2), Edge("max_pool_3x3", 1),
                 Edge("max_pool_3x3", 0), Edge("skip_connect", 2), Edge("skip_connect", 2), Edge("max_pool_3x3", 1)],
        reduceConcat: [2, 3, 4, 5])

    func op(_ name: String) -> Int { primitives.firstIndex(of: name)! }

    // MARK: Derivation

    func testDerive_HandSetWeights() throws {
        var w = Array(repeating: Array(repeating: Float(0.01), count: 8), count: 14)
        // Node 0 (edges 0, 1): `none` is largest on edge 0 but excluded; edge 1 is stronger, so it comes first.
        w[0][op("none")] = 0.9; w[0][op("max_pool_3x3")] = 0.05
        w[1][op("sep_conv_3x3")] = 0.3
        // Node 1 (edges 2, 3, 4 = inputs 0, 1, 2): inputs 0 and 2 tie; the lower input comes first.
        w[2][op("dil_conv_3x3")] = 0.4
        w[3][op("skip_connect")] = 0.2
        w[4][op("sep_conv_5x5")] = 0.4
        // Node 2 (edges 5…8 = inputs 0…3): input 3 is all `none`; input 0 ties skip/sep3 → the earlier op (skip).
        w[5][op("skip_connect")] = 0.6; w[5][op("sep_conv_3x3")] = 0.6
        w[6][op("avg_pool_3x3")] = 0.5
        w[8][op("none")] = 1.0
        // Node 3 (edges 9…13 = inputs 0…4).
        w[13][op("dil_conv_5x5")] = 0.7
        w[12][op("sep_conv_3x3")] = 0.2

        let (gene, concat) = try Genotype.derive(weights: w, opNames: primitives)
        XCTAssertEqual(gene, [Edge("sep_conv_3x3", 1), Edge("max_pool_3x3", 0),
                              Edge("dil_conv_3x3", 0), Edge("sep_conv_5x5", 2),
                              Edge("skip_connect", 0), Edge("avg_pool_3x3", 1),
                              Edge("dil_conv_5x5", 4), Edge("sep_conv_3x3", 3)])
        XCTAssertEqual(concat, [2, 3, 4, 5])

        // Without exclusion `none` wins where it is largest.
        let (withNone, _) = try Genotype.derive(weights: w, opNames: primitives, excluding: "")
        XCTAssertEqual(withNone[0], Edge("none", 0), "edge 0 (0.9 on none) is now the strongest")
        XCTAssertEqual(withNone[4...5], [Edge("none", 3), Edge("skip_connect", 0)])
    }

    func testDerive_MatchesDARTSParseOnTies() throws {
        // w[i][j] = ((37i + 11j + 5ij) mod 17) / 17: many exact ties between edges and between ops.
        var w: [[Float]] = []
        for i in 0..<14 {
            var row: [Float] = []
            for j in 0..<8 {
                let k: Int = (i * 37 + j * 11 + i * j * 5) % 17
                row.append(Float(k) / 17)
            }
            w.append(row)
        }
        let (gene, concat) = try Genotype.derive(weights: w, opNames: primitives)
        // Output of DARTS's model_search.py `_parse` on the same matrix.
        XCTAssertEqual(gene, [Edge("skip_connect", 0), Edge("sep_conv_3x3", 1), Edge("avg_pool_3x3", 0), Edge("sep_conv_5x5", 2),
                              Edge("dil_conv_5x5", 1), Edge("max_pool_3x3", 2), Edge("avg_pool_3x3", 1), Edge("max_pool_3x3", 0)])
        XCTAssertEqual(concat, [2, 3, 4, 5])

        // All equal: every node keeps inputs 0, 1 with the first op that is not `none`.
        let flat = Array(repeating: Array(repeating: Float(0.125), count: 8), count: 14)
        let (g2, _) = try Genotype.derive(weights: flat, opNames: primitives)
        XCTAssertEqual(g2, (0..<4).flatMap { _ in [Edge("max_pool_3x3", 0), Edge("max_pool_3x3", 1)] })
    }

    func testDerive_OtherSizesAndBadInput() throws {
        // Two nodes (2 + 3 = 5 edges), three ops, no `none` among them.
        let w: [[Float]] = [[0.1, 0.2, 0.3], [0.5, 0.1, 0.1], [0.1, 0.1, 0.1], [0.2, 0.9, 0.1], [0.3, 0.1, 0.1]]
        let (gene, concat) = try Genotype.derive(weights: w, opNames: ["a", "b", "c"], nodes: 2)
        XCTAssertEqual(gene, [Edge("a", 1), Edge("c", 0), Edge("b", 1), Edge("a", 2)])
        XCTAssertEqual(concat, [2, 3])
        XCTAssertEqual(Genotype.edgeCount(nodes: 4), 14)

        let full = try Genotype.derive(normal: Array(repeating: Array(repeating: 0.1, count: 8), count: 14),
                                       reduce: Array(repeating: Array(repeating: 0.1, count: 8), count: 14),
                                       opNames: primitives, opIDs: ["max_pool_3x3": "espalier.op.max_pool_3x3/1"])
        XCTAssertNoThrow(try full.validate())
        XCTAssertEqual(full.opIDs?["max_pool_3x3"], "espalier.op.max_pool_3x3/1")

        XCTAssertThrowsError(try Genotype.derive(weights: Array(w.prefix(4)), opNames: ["a", "b", "c"], nodes: 2))
        XCTAssertThrowsError(try Genotype.derive(weights: w.map { Array($0.prefix(2)) }, opNames: ["a", "b", "c"], nodes: 2))
        var nan = w; nan[3][1] = .nan
        XCTAssertThrowsError(try Genotype.derive(weights: nan, opNames: ["a", "b", "c"], nodes: 2)) {
            XCTAssertTrue("\($0)".contains("NaN"), "\($0)")
        }
        XCTAssertThrowsError(try Genotype.derive(weights: w.map { [$0[0]] }, opNames: ["none"], nodes: 2))
    }

    // MARK: JSON

    func testJSON_DARTSLayoutAndRoundTrip() throws {
        let text = dartsV2.jsonText()
        let obj = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        XCTAssertEqual(Set(obj.keys), ["normal", "normal_concat", "reduce", "reduce_concat"])
        let normal = obj["normal"] as! [[Any]]
        XCTAssertEqual(normal.count, 8)
        XCTAssertEqual(normal[0][0] as? String, "sep_conv_3x3")
        XCTAssertEqual(normal[0][1] as? Int, 0)
        XCTAssertEqual(normal[7][0] as? String, "dil_conv_3x3")
        XCTAssertEqual(normal[7][1] as? Int, 2)
        XCTAssertEqual(obj["reduce_concat"] as? [Int], [2, 3, 4, 5])
        XCTAssertTrue(text.contains(#""normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0]"#), text)
        XCTAssertTrue(text.contains(#""normal_concat": [2, 3, 4, 5]"#), text)

        XCTAssertEqual(try Genotype.decode(Data(text.utf8), file: "g.json"), dartsV2)
        // Codable agrees with jsonText.
        XCTAssertEqual(try JSONDecoder().decode(Genotype.self, from: try JSONEncoder().encode(dartsV2)), dartsV2)

        // As written by `json.dump(genotype._asdict())` in Python (tuples become arrays).
        let python = #"{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]], "normal_concat": [2, 3, 4, 5], "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1], ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]], "reduce_concat": [2, 3, 4, 5]}"#
        XCTAssertEqual(try Genotype.decode(Data(python.utf8), file: "py.json"), dartsV2)

        // Op ids travel along; files are written atomically and read back.
        var g = dartsV2
        g.opIDs = ["sep_conv_3x3": "espalier.op.sep_conv_3x3/1", "dil_conv_3x3": "espalier.op.dil_conv_3x3/1"]
        XCTAssertTrue(g.jsonText().contains(#""op_ids": {"dil_conv_3x3": "espalier.op.dil_conv_3x3/1", "sep_conv_3x3": "espalier.op.sep_conv_3x3/1"}"#))
        let p = path("genotype.json")
        try g.save(path: p)
        XCTAssertEqual(try Genotype.load(path: p), g)
        XCTAssertEqual(g.jsonText(), g.jsonText(), "deterministic")
    }

    func testLoad_ErrorsNameTheFile() throws {
        func write(_ text: String, _ name: String) throws -> String {
            let p = path(name)
            try Data(text.utf8).write(to: URL(fileURLWithPath: p))
            return p
        }
        let good = dartsV2.jsonText()
        let missing = path("missing.json")
        assertDataError(try Genotype.load(path: missing), contains: [missing, "no such genotype file"])
        assertDataError(try Genotype.load(path: dir), contains: [dir, "directory"])

        let p1 = try write("{\"normal\": [", "syntax.json")
        assertDataError(try Genotype.load(path: p1), contains: [p1, "not a valid genotype JSON"])
        let p2 = try write(#"{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], "normal_concat": [2]}"#, "nokey.json")
        assertDataError(try Genotype.load(path: p2), contains: [p2, "reduce"])
        let p3 = try write(good.replacingOccurrences(of: #"["dil_conv_3x3", 2]"#, with: #"["dil_conv_3x3", 2, 7]"#), "three.json")
        assertDataError(try Genotype.load(path: p3), contains: [p3, "two elements"])
        let p4 = try write(good.replacingOccurrences(of: #"["dil_conv_3x3", 2]"#, with: #"["dil_conv_3x3", "2"]"#), "type.json")
        assertDataError(try Genotype.load(path: p4), contains: [p4, "not a valid genotype JSON"])

        // Structure: input index out of range for its node, odd edge count, empty op name, bad concat.
        var g = dartsV2
        g.normal[1] = Edge("sep_conv_3x3", 2)
        let p5 = path("range.json"); try g.save(path: p5)
        assertDataError(try Genotype.load(path: p5), contains: [p5, "\"normal\" edge 1", "input 2", "node 0"])
        g = dartsV2
        g.reduce.removeLast()
        let p6 = path("odd.json"); try g.save(path: p6)
        assertDataError(try Genotype.load(path: p6), contains: [p6, "\"reduce\" has 7 edges", "2 per intermediate node"])
        g = dartsV2
        g.normal[3].op = " "
        let p7 = path("empty.json"); try g.save(path: p7)
        assertDataError(try Genotype.load(path: p7), contains: [p7, "edge 3", "empty op name"])
        g = dartsV2
        g.reduceConcat = [2, 3, 4, 6]
        let p8 = path("concat.json"); try g.save(path: p8)
        assertDataError(try Genotype.load(path: p8), contains: [p8, "reduce_concat", "state 6"])
        g = dartsV2
        g.normal = []
        let p9 = path("none.json"); try g.save(path: p9)
        assertDataError(try Genotype.load(path: p9), contains: [p9, "\"normal\" has no edges"])
        g = dartsV2
        g.opIDs = ["sep_conv_3x3": ""]
        let p10 = path("ids.json"); try g.save(path: p10)
        assertDataError(try Genotype.load(path: p10), contains: [p10, "op_ids", "sep_conv_3x3"])
    }

    // MARK: Pictures

    func testDOT_HasDARTSEdges() {
        let normal = dartsV2.dot(cell: .normal)
        XCTAssertTrue(normal.hasPrefix("digraph normal {"))
        XCTAssertTrue(normal.contains("rankdir=LR"))
        for node in ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"] {
            XCTAssertTrue(normal.contains("  \"\(node)\" [fillcolor="), "node \(node) missing:\n\(normal)")
        }
        XCTAssertTrue(normal.contains(#""c_{k-2}" -> "0" [label="sep_conv_3x3""#))
        XCTAssertTrue(normal.contains(#""c_{k-1}" -> "0" [label="sep_conv_3x3""#))
        XCTAssertTrue(normal.contains(#""c_{k-2}" -> "2" [label="skip_connect""#))
        XCTAssertTrue(normal.contains(#""0" -> "3" [label="dil_conv_3x3""#))
        for i in 0..<4 { XCTAssertTrue(normal.contains("\"\(i)\" -> \"c_{k}\""), "node \(i) → output") }
        XCTAssertEqual(normal.components(separatedBy: "->").count - 1, 8 + 4)
        XCTAssertFalse(normal.contains("\"4\""))

        let reduce = dartsV2.dot(cell: .reduce)
        XCTAssertTrue(reduce.hasPrefix("digraph reduce {"))
        XCTAssertTrue(reduce.contains(#""0" -> "1" [label="skip_connect""#))
        XCTAssertTrue(reduce.contains(#""c_{k-2}" -> "2" [label="max_pool_3x3""#))
        XCTAssertTrue(reduce.contains(#""0" -> "2" [label="skip_connect""#))
        XCTAssertTrue(reduce.contains(#""c_{k-1}" -> "3" [label="max_pool_3x3""#))
    }

    func testPictures_WrittenAndRenderedWhenDotExists() throws {
        let out = path("pics/nested")
        let written = try dartsV2.writePictures(directory: out)
        let dotNormal = (out as NSString).appendingPathComponent("genotype_normal.dot")
        let dotReduce = (out as NSString).appendingPathComponent("genotype_reduce.dot")
        XCTAssertTrue(written.contains(dotNormal) && written.contains(dotReduce), "\(written)")
        XCTAssertEqual(String(decoding: FileManager.default.contents(atPath: dotNormal) ?? Data(), as: UTF8.self),
                       dartsV2.dot(cell: .normal))
        let svgs = ["genotype_normal.svg", "genotype_reduce.svg"].map { (out as NSString).appendingPathComponent($0) }
        if Genotype.graphvizDot() != nil {
            for svg in svgs {
                XCTAssertTrue(written.contains(svg), "\(written)")
                let text = String(decoding: FileManager.default.contents(atPath: svg) ?? Data(), as: UTF8.self)
                XCTAssertTrue(text.contains("<svg"), "\(svg) is not an SVG")
                XCTAssertTrue(text.contains("sep_conv_3x3") || text.contains("max_pool_3x3"))
            }
        } else {
            for svg in svgs { XCTAssertFalse(FileManager.default.fileExists(atPath: svg)) }
        }
        // Every file in the folder is one we reported (no temporaries).
        let files = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        XCTAssertEqual(files, written.map { ($0 as NSString).lastPathComponent }.sorted())

        // Custom basename.
        let more = try dartsV2.writePictures(directory: out, basename: "epoch_3")
        XCTAssertTrue(more.contains((out as NSString).appendingPathComponent("epoch_3_reduce.dot")))
    }

    func testGraphvizLookupUsesPATH() throws {
        XCTAssertNil(Genotype.graphvizDot(environment: ["PATH": "/nonexistent-espalier:/also/not/here"]))
        // A fake executable `dot` in a folder on PATH is found; a non-executable one is not.
        let bin = path("bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        let fake = (bin as NSString).appendingPathComponent("dot")
        try Data("#!/bin/sh\nexit 1\n".utf8).write(to: URL(fileURLWithPath: fake))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: fake)
        XCTAssertNil(Genotype.graphvizDot(environment: ["PATH": "/nonexistent-espalier:" + bin]))
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fake)
        XCTAssertEqual(Genotype.graphvizDot(environment: ["PATH": "/nonexistent-espalier:" + bin]), fake)
        // Graphviz is installed on the development machine; if it is on PATH the lookup must see it.
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/dot"),
           (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains("/usr/bin") {
            XCTAssertNotNil(Genotype.graphvizDot())
        }
    }
}
