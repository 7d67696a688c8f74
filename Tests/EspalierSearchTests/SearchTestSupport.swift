// Helpers the search test files share: the tiny supernet most of them search (small enough for
// finite differences and second-long runs), a run of it on synthetic images, and Fashion-MNIST's
// training set, or a skip.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

/// C = 4, a normal and a reduction cell of 2 nodes, batch 4, seed 5; DARTS's 8 ops unless `ops`.
func tinySearchConfig(strategy: String = "espalier.strategy.darts/1", settings: [String: String] = [:],
                      ops: [String] = SearchSpaceDescription.dartsOps, epochs: Int = 1) -> SearchConfig {
    var c = SearchConfig()
    c.space.channels = 4
    c.space.cells = 2
    c.space.nodes = 2
    c.space.multiplier = 2
    c.space.stemMultiplier = 1
    c.space.reductionCells = [1]
    c.space.ops = ops
    c.strategy = strategy
    c.strategySettings = settings
    c.batchSize = 4
    c.epochs = epochs
    c.seed = 5
    return c
}

/// Fashion-MNIST's training set, or XCTSkip when the Debian package is not installed (a failure
/// under CI=true or ESPALIER_NO_SKIP=1, and whenever the installed files cannot be read).
func fashionMNISTTrainOrSkip(_ acc: MemoryAccountant) throws -> Dataset {
    try Prerequisite.fashionMNIST(.train, accountant: acc)
}

/// A search run of `c` on `images` synthetic 1×size×size images of 3 classes (seed 1), the
/// dataset counted under "dataset"; checks first that every plugin of `registry` loaded (unless
/// `allLoaded` is false: fixture folders hold broken plugins on purpose).
func syntheticSearchRun(_ c: SearchConfig, registry: PluginRegistry, images: Int = 16, size: Int = 8,
                        accountant: MemoryAccountant = MemoryAccountant(), out: String? = nil, allLoaded: Bool = true) throws -> SearchRun {
    if allLoaded { XCTAssertEqual(registry.failures.map(\.description), []) }
    let context = HostContext(accountant: accountant, seed: c.seed)
    let ds = try accountant.withOwner("dataset") {
        try Dataset.synthetic(count: images, channels: 1, height: size, width: size, classes: 3, seed: 1, accountant: accountant)
    }
    return try SearchRun(config: c, registry: registry, context: context, train: ds.all, outDirectory: out)
}

/// Central finite differences of `loss` at `indices` of `p` against `analytic` (the gradient
/// computed before): |analytic − numeric| ≤ 2e-4 + 5 % of |numeric|.
func assertGradientMatchesFiniteDifferences(_ p: Parameter, _ analytic: [Float], indices: [Int], eps: Float, loss: () throws -> Double,
                                            file: StaticString = #filePath, line: UInt = #line) throws {
    for i in indices {
        let old = p.value[i]
        p.value[i] = old + eps; let lp = try loss()
        p.value[i] = old - eps; let lm = try loss()
        p.value[i] = old
        let numeric = Float((lp - lm) / Double(2 * eps))
        XCTAssertEqual(analytic[i], numeric, accuracy: 2e-4 + 5e-2 * abs(numeric), "\(p.name)[\(i)]", file: file, line: line)
    }
}

/// The discrete network of a genotype searched with a tiny config's shape (C = 4, 2 cells, 3
/// classes, 8×8 images), built under owner "model", with its description, accountant and context.
func tinyDiscreteNetwork(_ g: Genotype, registry: PluginRegistry) throws -> (DiscreteNetwork, NetworkDescription, MemoryAccountant, HostContext) {
    var d = NetworkDescription(genotype: g)
    d.channels = 4; d.cells = 2; d.classes = 3; d.imageSize = 8
    let acc = MemoryAccountant()
    let context = HostContext(accountant: acc, seed: 1)
    let net = try acc.withOwner("model") { try DiscreteNetwork(d, registry: registry, context: context, seed: 1) }
    return (net, d, acc, context)
}

/// The accountant's figure of an exported FiGS op (no masks, affine) at intermediate width `mid`
/// (nil = C): forward FLOPs and bytes (kept activations + 3 × 4 bytes per weight).
func exportedOpFigure(_ id: String, c: Int, mid: Int?, input: [Int], registry: PluginRegistry) throws -> (flops: Double, bytes: Double) {
    let dry = MemoryAccountant(mode: .dryRun)
    var settings = ["masks": "false"]
    if let mid { settings["mid_channels"] = String(mid) }
    let op = try PluginOp(try registry.require(id, kind: .op), context: HostContext(accountant: dry),
                          config: OpConfig(inChannels: c, outChannels: c, affine: true), settings: settings, ownerPath: "ref")
    let g = Graph(accountant: dry)
    let x = try g.leaf(Tensor(shape: input, category: .activations, accountant: dry))
    let before = dry.currentBytes(ownerPrefix: "").total
    _ = try op(g, x)
    return (Double(g.flops), Double(dry.currentBytes(ownerPrefix: "").total - before) + Double(12 * op.parameters.reduce(0) { $0 + $1.count }))
}
