// The copyable template plugin (Samples/template-op): built by the one `cc` command its README and
// source give, against SDK/include alone and clean under strict warnings; listed by `espalier
// plugins`; and its composed op run forward through the host against a reference computed here
// (1×1 convolution at the edge's stride, then batch norm on the batch's statistics), its input
// gradient against finite differences.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class TemplatePluginTests: XCTestCase {
    static let id = "org.example.op.conv1x1_bn/1"
    static let library = "libespalier-template-op.so"

    func testTemplateOp_BuiltWithItsReadmesCommand_IsListedAndRunsForwardAsConvThenBatchNorm() throws {
        let dir = try PluginFixtures.tempDir("template-op")
        let sampleDir = PluginFixtures.repoRoot.appendingPathComponent("Samples/template-op").path
        let command = ["cc", "-std=c99", "-O2", "-shared", "-fPIC", "-I", "../../SDK/include", "-o", Self.library, "template_op.c", "-lm"]
        for file in ["README.md", "template_op.c"] {
            let text = try String(contentsOfFile: sampleDir + "/" + file, encoding: .utf8)
            XCTAssertTrue(text.contains(command.joined(separator: " ")), "\(file) gives the build command")
        }
        var build = command
        build[build.firstIndex(of: "-o")! + 1] = dir + "/" + Self.library
        let (status, log) = try PluginFixtures.run(build, cwd: sampleDir)
        XCTAssertEqual(status, 0, log)
        let (strict, strictLog) = try PluginFixtures.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only",
                                                          "-I", "../../SDK/include", "template_op.c"], cwd: sampleDir)
        XCTAssertEqual(strict, 0, "a template is copied: it compiles without a warning. \(strictLog)")

        // Listed by the command line host, from the folder given with --plugin-dir.
        let (listStatus, listing) = try PluginFixtures.run([try Prerequisite.espalierBinary(), "plugins", "--plugin-dir", dir])
        XCTAssertEqual(listStatus, 0, listing)
        XCTAssertTrue(listing.contains(Self.id) && listing.contains(Self.library), listing)

        // Forward through the host.
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 5)
        let registry = PluginLoader(context: context).load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        let component = try registry.require(Self.id, kind: .op)
        XCTAssertEqual(component.form, "composed")
        let x = try randomTensor([2, 3, 5, 5], acc, seed: 11, bound: 2)
        for (stride, affine) in [(1, false), (2, true)] {
            let owner = "cell0/edge\(stride)/conv1x1_bn"
            let op = try PluginOp(component, context: context, config: OpConfig(inChannels: 3, outChannels: 4, stride: stride, affine: affine),
                                  ownerPath: owner)
            XCTAssertEqual(op.parameters.map(\.name), (["conv.weight"] + (affine ? ["bn.weight", "bn.bias"] : [])).map { owner + "/" + $0 })
            XCTAssertEqual(op.buffers.count, 2, "running mean and variance")
            let weight = op.parameters[0].value
            let gamma: [Float] = affine ? [0.5, 1.5, -1, 2] : [1, 1, 1, 1], beta: [Float] = affine ? [0.1, -0.2, 0.3, 0] : [0, 0, 0, 0]
            if affine {
                for c in 0..<4 { op.parameters[1].value[c] = gamma[c]; op.parameters[2].value[c] = beta[c] }
            }
            let g = Graph(accountant: acc)
            let y = try op(g, g.constant(x))
            let side = (5 + stride - 1) / stride
            XCTAssertEqual(y.shape, [2, 4, side, side])
            // Reference: conv[n, o, i, j] = Σ_c W[o, c] · x[n, c, i·s, j·s]; then per channel o,
            // (conv − mean) / √(var + 1e-5) · γ + β with the batch's mean and biased variance.
            for o in 0..<4 {
                var conv: [Double] = []
                for n in 0..<2 { for i in 0..<side { for j in 0..<side {
                    conv.append((0..<3).reduce(0.0) { $0 + Double(weight[o * 3 + $1]) * Double(x[((n * 3 + $1) * 5 + i * stride) * 5 + j * stride]) })
                } } }
                let mean = conv.reduce(0, +) / Double(conv.count)
                let variance = conv.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(conv.count)
                for n in 0..<2 { for p in 0..<(side * side) {
                    let expected = (conv[n * side * side + p] - mean) / (variance + 1e-5).squareRoot() * Double(gamma[o]) + Double(beta[o])
                    XCTAssertEqual(Double(y.value[(n * 4 + o) * side * side + p]), expected, accuracy: 1e-4, "stride \(stride) channel \(o)")
                } }
            }
            try GradCheck().check("template op dX, stride \(stride)", inputs: [x]) { g, v in try op(g, v[0]) }
        }
    }
}
