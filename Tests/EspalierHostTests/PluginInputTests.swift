// What a plugin hands the host, checked where it arrives (issue 14): primitive attributes the host
// does not know, a soft gate that skips candidates, output shapes whose element count overflows,
// parameter names outside [a-z0-9_.-], dynamic methods that reuse a built-in name, and plugin
// folders and files that are skipped. Fixture: Fixtures/settings_fixture.c.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

/// Builds Fixtures/settings_fixture.c into `dir` (default: a fresh folder) and returns the folder.
func buildSettingsFixture(_ file: String = "libespalier-settings.so", in dir: String? = nil, defines: [String] = []) throws -> String {
    let dir = try dir ?? PluginFixtures.tempDir()
    let source = PluginFixtures.repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/settings_fixture.c").path
    try PluginFixtures.build(file, in: dir, defines: defines, source: source)
    return dir
}

final class PluginInputTests: XCTestCase {
    static let fixtureDir: String = try! buildSettingsFixture()

    func registry(_ context: HostContext) -> PluginRegistry {
        let r = PluginLoader(context: context).load(PluginSearchPath(directories: [Self.fixtureDir]))
        XCTAssertEqual(r.failures.map(\.description), [])
        return r
    }

    // MARK: Primitive attributes

    func testUnknownPrimitiveAttribute_IsAnErrorNamingTheOpThePrimitiveAndTheKnownAttributes() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let component = try registry(context).require("org.settings.op.scaled/1", kind: .op)
        let x = try Tensor.zeros([1, 2, 4, 4], category: .data, accountant: acc)
        // The right name works: stride 2 halves the map.
        let good = try PluginOp(component, context: context, config: OpConfig(inChannels: 2, outChannels: 2, stride: 2),
                                settings: ["attr": "stride"], ownerPath: "cell1/edge0/scaled")
        XCTAssertEqual(try good(Graph(accountant: acc), Graph(accountant: acc).constant(x)).shape, [1, 2, 2, 2])
        // The typo `strides` is refused at once, in a real run and in a dry run.
        for mode in [MemoryAccountant.Mode.real, .dryRun] {
            let a = MemoryAccountant(mode: mode)
            let ctx = HostContext(accountant: a, seed: 1)
            let op = try PluginOp(try registry(ctx).require("org.settings.op.scaled/1", kind: .op), context: ctx,
                                  config: OpConfig(inChannels: 2, outChannels: 2, stride: 2), settings: ["attr": "strides"], ownerPath: "cell1/edge0/scaled")
            let g = Graph(accountant: a)
            let input = try Tensor.zeros([1, 2, 4, 4], category: .data, accountant: a)
            XCTAssertThrowsError(try op(g, g.constant(input))) { error in
                let text = "\(error)"
                for part in ["org.settings.op.scaled/1", "cell1/edge0/scaled", "avg_pool2d", "'strides'", "count_include_pad, kernel, padding, stride"] {
                    XCTAssertTrue(text.contains(part), "\(mode): '\(part)' missing from: \(text)")
                }
            }
        }
    }

    // MARK: Soft gates and `active`

    func testSoftGateThatSkipsACandidateWithWeight_IsAnErrorNamingTheGate() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let component = try registry(context).require("org.settings.gate.clock/1", kind: .gate)
        let logits = try Tensor.zeros([2, 3], category: .parameters, accountant: acc)
        // Without skipping: fine.
        let ok = try PluginGate(component, context: context, granularity: .ops, rows: 2, cols: 3, ownerPath: "arch/normal/gate")
        let g0 = Graph(accountant: acc)
        XCTAssertEqual(try ok(g0, g0.constant(logits)).active, [1, 1, 1, 1, 1, 1])
        // Marking candidate 0 inactive while giving it weight 1/3: refused, naming the gate and the fix.
        let gate = try PluginGate(component, context: context, granularity: .ops, rows: 2, cols: 3, settings: ["skip_first": "true"],
                                  ownerPath: "arch/normal/gate")
        let g = Graph(accountant: acc)
        XCTAssertThrowsError(try gate(g, g.constant(logits))) { error in
            let text = "\(error)"
            for part in ["org.settings.gate.clock/1", "arch/normal/gate", "candidate 0 of row 0", "ES_GATE_HARD"] {
                XCTAssertTrue(text.contains(part), "'\(part)' missing from: \(text)")
            }
        }
    }

    // MARK: Shapes

    func testOutputShapeWhoseElementCountOverflows_IsRefusedBeforeAllocating_NamingTheOp() throws {
        for mode in [MemoryAccountant.Mode.real, .dryRun] {
            let acc = MemoryAccountant(mode: mode)
            let context = HostContext(accountant: acc, seed: 1)
            let op = try PluginOp(try registry(context).require("org.settings.op.huge/1", kind: .op), context: context,
                                  config: OpConfig(inChannels: 3, outChannels: 3), ownerPath: "cell0/edge2/huge")
            let g = Graph(accountant: acc)
            let x = try Tensor.zeros([2, 3, 8, 8], category: .data, accountant: acc)
            let before = acc.currentTotal
            XCTAssertThrowsError(try op(g, g.constant(x))) { error in
                let text = "\(error)"
                for part in ["org.settings.op.huge/1", "cell0/edge2/huge", "(2, 3, 268435456, 268435456)", "elements"] {
                    XCTAssertTrue(text.contains(part), "\(mode): '\(part)' missing from: \(text)")
                }
            }
            XCTAssertEqual(acc.currentTotal, before, "nothing was allocated for it")
        }
    }

    func testDeclaredParameterShapeWhoseElementCountOverflows_IsRefused_NamingTheOp() throws {
        let dir = try buildSettingsFixture(defines: ["FIX_HUGE_PARAM"])
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let registry = PluginLoader(context: context).load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        XCTAssertThrowsError(try PluginOp(try registry.require("org.settings.op.scaled/1", kind: .op), context: context,
                                          config: OpConfig(inChannels: 2, outChannels: 2), ownerPath: "cell0/edge0/scaled")) { error in
            let text = "\(error)"
            for part in ["org.settings.op.scaled/1: create at cell0/edge0/scaled", "declare_param 'huge'", "(4294967296, 4294967296)", "more than 2147483648 elements"] {
                XCTAssertTrue(text.contains(part), "'\(part)' missing from: \(text)")
            }
        }
        XCTAssertEqual(acc.currentTotal, 0, "nothing was allocated for it")
    }
}
