// The zero-shot library through the host: the NNGP score (‖K‖_F of the sample correlation matrix
// of the logits) as the libffi dynamic method zeroshot.score on hand-made logits, checked against
// a value computed by hand; its invariances (per-row shift and scale, zero-variance rows); and the
// strategies' descriptions and parameter errors.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class ZeroShotTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func score(_ rows: [[Float]]) throws -> Double {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let m = try XCTUnwrap(Self.registry.methods(slot: "zeroshot.score").first { $0.name == "nngp-frobenius" })
        var flat = rows.flatMap { $0 }
        let r = try flat.withUnsafeMutableBytes { raw in
            try m.call([.pointer(raw.baseAddress), .int(Int64(rows.count)), .int(Int64(rows[0].count))])
        }
        guard case .double(let v) = r else { XCTFail("zeroshot.score returned \(r)"); return .nan }
        return v
    }

    func testNNGPScore_OfAHandMadeLogitsMatrix() throws {
        // Rows centred and scaled: z1 = (−1, 0, 1)/√2, z2 = (1, 0, −1)/√2, z3 = (−1, −1, 2)/√6.
        // K = [[1, −1, √3/2], [−1, 1, −√3/2], [√3/2, −√3/2, 1]]: ‖K‖_F² = 3 + 2·(1 + 3/4 + 3/4) = 8.
        let logits: [[Float]] = [[1, 2, 3], [3, 2, 1], [1, 1, 4]]
        XCTAssertEqual(try score(logits), 8.0.squareRoot(), accuracy: 1e-6)
        // Correlation: each row's shift and positive scale do not matter.
        XCTAssertEqual(try score([[13, 16, 19], [3, 2, 1], [-4, -4, 5]]), 8.0.squareRoot(), accuracy: 1e-5)
        // A row with no variance has no correlation: it adds nothing.
        XCTAssertEqual(try score(logits + [[5, 5, 5]]), 8.0.squareRoot(), accuracy: 1e-6)
        // n identical rows (up to scale): K is all ones, ‖K‖_F = n.
        XCTAssertEqual(try score([[0, 1, 5, 2], [0, 2, 10, 4], [1, 2, 6, 3], [0, 1, 5, 2]]), 4, accuracy: 1e-5)
        // Two orthogonal centred rows: K = I, ‖K‖_F = √2.
        XCTAssertEqual(try score([[1, -1, 0, 0], [0, 0, 1, -1]]), 2.0.squareRoot(), accuracy: 1e-6)
    }

    func testNNGPScore_NullMatrixOrBadShapeIsNaN() throws {
        let m = try XCTUnwrap(Self.registry.methods(slot: "zeroshot.score").first)
        XCTAssertEqual(m.signature.description, "double(pointer,int64,int64)")
        guard case .double(let v) = try m.call([.pointer(nil), .int(3), .int(3)]) else { return XCTFail("not a double") }
        XCTAssertTrue(v.isNaN)
        var x: [Float] = [1, 2]
        let w = try x.withUnsafeMutableBytes { try m.call([.pointer($0.baseAddress), .int(0), .int(2)]) }
        guard case .double(let v2) = w else { return XCTFail("not a double") }
        XCTAssertTrue(v2.isNaN)
    }

    func testStrategies_AreDescribed_AndRefuseBadParameters() throws {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let z = try Self.registry.require("espalier.strategy.zero-one-shot/1", kind: .strategy)
        let e = try Self.registry.require("espalier.strategy.etenas/1", kind: .strategy)
        for name in ["xi", "mode", "granularity", "partial_channels", "edge_normalization", "batches", "repeats", "prune_state"] {
            XCTAssertTrue(z.params.contains { $0.name == name }, "zero-one-shot has \(name)")
        }
        XCTAssertEqual(z.params.first { $0.name == "xi" }?.defaultValue, "0.5")
        XCTAssertEqual(z.params.first { $0.name == "partial_channels" }?.defaultValue, "1")
        XCTAssertTrue(e.params.contains { $0.name == "batches" })
        let context = HostContext(accountant: MemoryAccountant(), seed: 1)
        XCTAssertThrowsError(try PluginStrategy(z, context: context, settings: ["xi": "1"])) { err in
            XCTAssertTrue("\(err)".contains("xi must be in (0, 1)"), "\(err)")
        }
        XCTAssertThrowsError(try PluginStrategy(z, context: context, settings: ["mode": "bernoulli"])) { err in
            XCTAssertTrue("\(err)".contains("mode"), "\(err)")
        }
        XCTAssertNoThrow(try PluginStrategy(z, context: context, settings: ["mode": "random", "xi": "0.3", "granularity": "op"]))
        XCTAssertNoThrow(try PluginStrategy(e, context: context, settings: [:]))
    }
}
