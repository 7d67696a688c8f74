// Settings between the steps of a workflow (issue 14): the run state of post-epoch gate calls,
// op settings carried from the search through genotype.json into `espalier train` and the saved
// model, regularizers selected twice or sharing a short name, and each regularizer's term and
// the architecture loss in every epoch's log. Fixture: EspalierHostTests/Fixtures/settings_fixture.c.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class WorkflowSettingsTests: XCTestCase {
    /// The built plugins and the settings fixture.
    static let fixtureDir: String = {
        let dir = try! PluginFixtures.tempDir()
        let source = PluginFixtures.repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/settings_fixture.c").path
        try! PluginFixtures.build("libespalier-settings.so", in: dir, source: source)
        return dir
    }()
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(
        PluginSearchPath.standard(extraDirectories: [fixtureDir], environment: [:]))

    static let scaled = "org.settings.op.scaled/1"
    static let count = "org.settings.regularizer.count/1"

    func run(_ c: SearchConfig, out: String? = nil) throws -> SearchRun {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let run = try syntheticSearchRun(c, registry: Self.registry, out: out, allLoaded: false)
        try run.run()
        return run
    }

    // MARK: Run state

    func testPostEpochGateCalls_CarryTheRealEpochAndStep() throws {
        var c = tinySearchConfig(ops: ["espalier.op.none/1", "espalier.op.skip_connect/1", Self.scaled], epochs: 2)
        c.gate = "org.settings.gate.clock/1"   // in evaluation, every weight is epoch·1000 + step + 1
        let run = try run(c)
        let steps = run.trainLoader.batchesPerEpoch
        XCTAssertGreaterThan(steps, 0)
        XCTAssertEqual(run.logs.count, 2)
        for (e, log) in run.logs.enumerated() {
            let expected = Float(e * 1000 + (e + 1) * steps + 1)
            XCTAssertEqual(Set((log.weightsNormal + log.weightsReduce).flatMap { $0 }), [expected],
                           "epoch \(e + 1): the logged weights come from a call with the epoch's real state")
        }
    }

    func testTrainingAGenotype_EveryOpCallCarriesTheEpochAndStep() throws {
        // Normal cells: the fixture's stamp op, which logs the state of every forward.
        let g = Genotype(normal: [.init("stamp", 0), .init("stamp", 1)], normalConcat: [2], reduce: [.init("scaled", 0), .init("scaled", 1)],
                         reduceConcat: [2], opIDs: ["stamp": "org.settings.op.stamp/1", "scaled": Self.scaled])
        var d = NetworkDescription(genotype: g)
        d.channels = 4; d.cells = 3; d.classes = 3; d.imageSize = 8
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        var lines: [String] = []
        context.logSink = { _, m in if m.hasPrefix("stamp ") { lines.append(m) } }
        let net = try acc.withOwner("model") { try DiscreteNetwork(d, registry: Self.registry, context: context, seed: 1) }
        let ds = try Dataset.synthetic(count: 16, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc)
        var tc = TrainConfig()
        tc.epochs = 2
        tc.batchSize = 8
        net.stepsPerEpoch = 2
        net.providesRunState(to: context)
        _ = try ClassifierTrainer(model: net, accountant: acc, config: tc).fit(train: ds.all, test: ds.all.prefix(8))
        XCTAssertEqual(Set(lines.filter { $0.contains("training=1") }),
                       ["stamp training=1 epoch=0/2 step=0/4", "stamp training=1 epoch=0/2 step=1/4",
                        "stamp training=1 epoch=1/2 step=2/4", "stamp training=1 epoch=1/2 step=3/4"])
        XCTAssertTrue(lines.contains("stamp training=0 epoch=1/2 step=4/4"), "the evaluation after the last epoch: \(lines)")
    }

    // MARK: Op settings from search to train

    func testGenotypeRecordsResolvedSettings_TrainBuildsWithThem_AndOverridesWin() throws {
        var c = tinySearchConfig(ops: ["espalier.op.none/1", Self.scaled], epochs: 1)
        c.opSettings = [Self.scaled: ["scale": "0.25"]]
        let out = try PluginFixtures.tempDir("search")
        try SearchRun.prepareOutput(out, config: c)
        _ = try run(c, out: out)
        let g = try Genotype.load(path: out + "/genotype.json")
        XCTAssertTrue(g.normal.allSatisfy { $0.op == "scaled" }, "\(g.normal)")
        XCTAssertEqual(g.settings?[Self.scaled], ["scale": "0.25", "attr": "stride"], "the op's resolved settings, defaults included")
        XCTAssertEqual(g.settings?["espalier.gate.softmax/1"]?["tau"], "1.0", "every component's, the gate's too")
        XCTAssertEqual(g.settings?["espalier.strategy.darts/1"]?["order"], "first")

        // The discrete network builds every op with the recorded settings.
        let (net, d, _, context) = try tinyDiscreteNetwork(g, registry: Self.registry)
        XCTAssertFalse(net.ops.isEmpty)
        XCTAssertEqual(Set(net.ops.map { $0.settings["scale"] }), ["0.25"])
        // … and the saved model keeps them (its description's genotype).
        let path = out + "/model.safetensors"
        try net.save(path: path)
        let (loaded, meta) = try DiscreteNetwork.load(path: path, registry: Self.registry, context: context)
        XCTAssertEqual(Set(loaded.ops.map { $0.settings["scale"] }), ["0.25"])
        XCTAssertTrue(meta["espalier.network"]?.contains("\"scale\":\"0.25\"") ?? false)
        XCTAssertEqual(loaded.description, d)

        // Overrides (espalier train --set / --config) win, by short name or by id.
        for key in ["scaled.scale", "\(Self.scaled).scale"] {
            let o = try g.overridingSettings([key: "0.5"], registry: Self.registry)
            let (n2, _, _, _) = try tinyDiscreteNetwork(o, registry: Self.registry)
            XCTAssertEqual(Set(n2.ops.map { $0.settings["scale"] }), ["0.5"], key)
        }
        func error(_ o: [String: String]) -> String {
            do { _ = try g.overridingSettings(o, registry: Self.registry); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(error(["swish.beta_init": "1"]).contains("the genotype has no op 'swish'; its ops take scaled.PARAM"), error(["swish.beta_init": "1"]))
        XCTAssertTrue(error(["scaled.factor": "1"]).contains("has no parameter 'factor'; its parameters: scale, attr"))
        XCTAssertTrue(error(["scaled.scale": "99"]).contains("above the maximum"))

        // A genotype written before settings existed still loads, and its ops take their defaults.
        var old = g
        old.settings = nil
        let oldPath = out + "/old.json"
        try old.save(path: oldPath)
        let oldText = try String(contentsOfFile: oldPath, encoding: .utf8)
        XCTAssertFalse(oldText.contains("\"settings\""), oldText)
        let (n3, _, _, _) = try tinyDiscreteNetwork(try Genotype.load(path: oldPath), registry: Self.registry)
        XCTAssertEqual(Set(n3.ops.map { $0.settings["scale"] }), ["1.0"])
    }

    // MARK: Regularizer terms, repeated regularizers

    func testEachRegularizerTermAndTheArchitectureLoss_AreLoggedPerEpoch_EvenForARegularizerSelectedTwice() throws {
        var c = tinySearchConfig(ops: ["espalier.op.none/1", "espalier.op.skip_connect/1", Self.scaled], epochs: 2)
        // The same regularizer twice, with its own settings each (instance keys id and id#2).
        let sel = try Selection.resolve(SelectionRequest(strategy: c.strategy, gate: c.gate, ops: c.space.ops, regularizers: [Self.count, Self.count],
                                                         set: ["count#1.weight": "2", "\(Self.count)#2.weight": "3"]), registry: Self.registry)
        c.regularizers = sel.regularizers.map(\.component.id)
        c.regularizerSettings = Dictionary(uniqueKeysWithValues: sel.regularizers.map { ($0.instanceKey, $0.settings) })
        XCTAssertEqual(c.regularizerSettings, [Self.count: ["weight": "2"], Self.count + "#2": ["weight": "3"]])
        let out = try PluginFixtures.tempDir("search")
        try SearchRun.prepareOutput(out, config: c)
        let run = try run(c, out: out)
        XCTAssertEqual(run.logs.count, 2)
        for log in run.logs {
            XCTAssertEqual(log.regularizerTerms, [Self.count: 2, Self.count + "#2": 3])
            let arch = try XCTUnwrap(log.archLoss, "the architecture loss is logged")
            XCTAssertGreaterThan(arch, 5, "the validation loss plus both terms (2 + 3)")
        }
        let lines = try String(contentsOfFile: out + "/log.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        for line in lines {
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertEqual((object["regularizer_terms"] as? [String: Double])?[Self.count + "#2"], 3, String(line))
            XCTAssertNotNil(object["arch_loss"] as? Double, String(line))
        }
    }

    func testAWeightsOnlyEpoch_LogsNoArchitectureLoss() throws {
        var c = tinySearchConfig(strategy: "espalier.strategy.darts/1", ops: ["espalier.op.none/1", Self.scaled], epochs: 1)
        c.strategySettings = ["warmup_epochs": "1"]
        c.regularizers = [Self.count]
        let run = try run(c)
        XCTAssertNil(run.logs[0].archLoss, "no architecture step ran")
        XCTAssertNil(run.logs[0].regularizerTerms)
    }
}
