// The loader: real libraries through the normal discovery path; every rejection case with a
// fixture library of its own; version negotiation; the samples and built-in plugins listed.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class LoaderTests: XCTestCase {
    func testWellFormedLibrary_LoadsAllFourKinds() throws {
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-fixture.so", in: dir)
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        XCTAssertEqual(Set(registry.components.map(\.id)),
                       ["org.fixture.op.relu-conv/1", "org.fixture.op.masked-relu/1", "org.fixture.op.merged/1", "org.fixture.gate.linear/1",
                        "org.fixture.regularizer.l2/1", "org.fixture.strategy.warmup/1", "org.fixture.strategy.pruner/1"])
        XCTAssertEqual(registry.component(id: "org.fixture.op.relu-conv/1")?.form, "composed")
        XCTAssertEqual(registry.component(id: "org.fixture.strategy.warmup/1")?.params.map(\.name), ["warmup", "epochs", "order"])
    }

    func testEveryRejection_NamesTheFileAndTheProblem_AndTheOthersStillLoad() throws {
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-a-good.so", in: dir, defines: ["FIX_ID=\"org.good\""])
        let cases: [(file: String, defines: [String], expect: String)] = [
            ("libespalier-b-major.so", ["FIX_MAJOR=2", "FIX_ID=\"org.b\""], "built for ABI 2.\(ESPALIER_ABI_MINOR), but this host speaks ABI 1.\(ESPALIER_ABI_MINOR)"),
            ("libespalier-c-noentry.so", ["FIX_NO_ENTRY"], "no entry symbol 'espalier_plugin_entry_v1'"),
            ("libespalier-d-refuses.so", ["FIX_ENTRY_NULL"], "refused the host's ABI 1.\(ESPALIER_ABI_MINOR)"),
            ("libespalier-e-init.so", ["FIX_INIT_FAILS", "FIX_ID=\"org.e\""], "init failed (invalid argument): the fixture's licence file is missing"),
            ("libespalier-f-kind.so", ["FIX_BAD_KIND", "FIX_ID=\"org.f\""], "unknown kind 99"),
            ("libespalier-g-nullid.so", ["FIX_NULL_ID", "FIX_ID=\"org.g\""], "id is NULL"),
            ("libespalier-h-default.so", ["FIX_BAD_DEFAULT", "FIX_ID=\"org.h\""], "'not-a-number' is not a finite number"),
            ("libespalier-i-signature.so", ["FIX_BAD_SIGNATURE", "FIX_ID=\"org.i\""], "malformed dynamic method fixture.greet=greet"),
            ("libespalier-j-small.so", ["FIX_SMALL_STRUCT", "FIX_ID=\"org.j\""], "declares struct_size 0"),
            ("libespalier-k-duplicate.so", ["FIX_ID=\"org.good\""], "duplicate id 'org.good.op.relu-conv/1', already provided by"),
        ]
        for c in cases { try PluginFixtures.build(c.file, in: dir, defines: c.defines) }
        // Not a plugin by name: never opened.
        try "not a library".write(toFile: dir + "/libother.so", atomically: true, encoding: .utf8)
        // A plugin by name that is not a library at all.
        try "garbage".write(toFile: dir + "/libespalier-l-garbage.so", atomically: true, encoding: .utf8)

        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(registry.libraries.map(\.fileName), ["libespalier-a-good.so"], "only the good library loads")
        XCTAssertEqual(registry.components.count, 7)
        XCTAssertEqual(registry.failures.count, cases.count + 1)
        for c in cases {
            guard let f = registry.failures.first(where: { $0.path.hasSuffix(c.file) }) else { XCTFail("no failure for \(c.file)"); continue }
            XCTAssertTrue(f.reason.contains(c.expect), "\(c.file): \(f.reason)")
            XCTAssertFalse(f.description.contains("\n"), "one line per failure")
        }
        XCTAssertTrue(registry.failures.contains { $0.path.hasSuffix("libespalier-l-garbage.so") && $0.reason.contains("cannot be loaded") })
    }

    func testVersionNegotiation_OlderMinorAcceptedWhereAllowed_OthersRefused() throws {
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-m0.so", in: dir, defines: ["FIX_MINOR=0", "FIX_ID=\"org.m0\""])
        try PluginFixtures.build("libespalier-m1.so", in: dir, defines: ["FIX_MINOR=1", "FIX_ID=\"org.m1\""])
        try PluginFixtures.build("libespalier-m3.so", in: dir, defines: ["FIX_MINOR=3", "FIX_ID=\"org.m3\""])
        try PluginFixtures.build("libespalier-x2.so", in: dir, defines: ["FIX_MAJOR=2", "FIX_ID=\"org.x2\""])
        // A host at ABI 1.2 that still supports plugins built for 1.1 and later.
        let loader = PluginLoader(context: HostContext(), hostMinor: 2, minimumMinor: 1)
        let registry = loader.load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(Set(registry.libraries.map(\.fileName)), ["libespalier-m1.so", "libespalier-m3.so"])
        let reasons = Dictionary(uniqueKeysWithValues: registry.failures.map { (URL(fileURLWithPath: $0.path).lastPathComponent, $0.reason) })
        XCTAssertTrue(reasons["libespalier-m0.so"]?.contains("built for ABI 1.0, older than the oldest this host supports (1.1)") == true, "\(reasons)")
        XCTAssertTrue(reasons["libespalier-x2.so"]?.contains("built for ABI 2.\(ESPALIER_ABI_MINOR), but this host speaks ABI 1.2") == true, "\(reasons)")
        // The default host (the SDK's minor, minimum 0) takes the 1.0 plugin.
        let plain = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        XCTAssertTrue(plain.libraries.map(\.fileName).contains("libespalier-m0.so"))
    }

    /// ABI 1.7 appended `flags` to the op table: a plugin built for 1.6 (its op tables end before
    /// it) still loads, its composed ops are recomputable, and nothing past its tables is read.
    func testOpTablesOfABI16_LoadWithoutTheFlagsField() throws {
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-m6.so", in: dir, defines: ["FIX_TABLES_1_6", "FIX_MINOR=6", "FIX_ID=\"org.m6\""])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        let op = try registry.require("org.m6.op.relu-conv/1", kind: .op)
        XCTAssertTrue(op.isRecomputableOp, "a composed op is replayed by the host")
        XCTAssertEqual(op.form, "composed")
    }

    func testDiscovery_EnvironmentPathAndExtraDirectories() throws {
        let a = try PluginFixtures.tempDir("a"), b = try PluginFixtures.tempDir("b")
        try PluginFixtures.build("libespalier-one.so", in: a, defines: ["FIX_ID=\"org.one\""])
        try PluginFixtures.build("libespalier-two.so", in: b, defines: ["FIX_ID=\"org.two\""])
        let path = PluginSearchPath.standard(extraDirectories: [b], environment: ["ESPALIER_PLUGIN_PATH": "/nonexistent:" + a], executableDirectory: nil)
        XCTAssertEqual(path.directories, ["/nonexistent", a, b])
        let registry = PluginLoader(context: HostContext()).load(path)
        XCTAssertEqual(registry.libraries.map(\.fileName), ["libespalier-one.so", "libespalier-two.so"])
    }

    func testBuiltTree_ListsSamplesAndBuiltIns_WithNoFailures() throws {
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        let ids = Set(registry.components.map(\.id))
        for id in ["org.example.op.swish/1", "org.example.gate.sparsemax/1", "org.example.strategy.patience/1", "espalier.gate.softmax/1"] {
            XCTAssertTrue(ids.contains(id), "\(id) missing from \(ids.sorted()) in \(PluginFixtures.builtPluginDir)")
        }
        let swish = try registry.require("org.example.op.swish/1", kind: .op)
        XCTAssertEqual(swish.params.map(\.name), ["beta_init"])
        XCTAssertEqual(swish.form, "raw kernel, recomputable")
        XCTAssertEqual(swish.methods.map(\.selector), ["beta.warmup=linear-ramp"])
        XCTAssertThrowsError(try registry.require("org.example.op.swish/1", kind: .gate)) { XCTAssertTrue("\($0)".contains("is a op, not a gate")) }
        XCTAssertThrowsError(try registry.require("espalier.gate.nope/1", kind: .gate)) { XCTAssertTrue("\($0)".contains("available: ")) }
    }

    func testEveryHeader_CompilesAloneAsC99WithWarningsAsErrors() throws {
        let headers = try FileManager.default.contentsOfDirectory(atPath: PluginFixtures.sdkInclude + "/espalier").filter { $0.hasSuffix(".h") }.sorted()
        XCTAssertEqual(headers.count, 7)
        let dir = try PluginFixtures.tempDir("headers")
        for h in headers {
            let src = dir + "/check_\(h).c"
            try "#include <espalier/\(h)>\nint main(void) { return 0; }\n".write(toFile: src, atomically: true, encoding: .utf8)
            let (status, log) = try PluginFixtures.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", PluginFixtures.sdkInclude, "-c", src, "-o", src + ".o"])
            XCTAssertEqual(status, 0, "\(h): \(log)")
        }
    }

    func testCSamples_BuiltWithTheirReadmesOneCommand_LoadAndAreDescribed() throws {
        for (folder, source, library, id, name, libs) in [("c-swish-op", "swish.c", "libespalier-sample-swish.so", "org.example.op.swish/1", "org.example.swish", ["-lm"]),
                                                          ("c-patience-strategy", "patience.c", "libespalier-sample-patience.so", "org.example.strategy.patience/1",
                                                           "org.example.patience", [])] {
            let dir = try PluginFixtures.tempDir("csample")
            let sampleDir = PluginFixtures.repoRoot.appendingPathComponent("Samples/" + folder).path
            // The exact command of the sample's README.md, output into a temporary plugin folder.
            let (status, log) = try PluginFixtures.run(["cc", "-std=c99", "-O2", "-shared", "-fPIC", "-I", "../../SDK/include", "-o", dir + "/" + library, source] + libs,
                                                       cwd: sampleDir)
            XCTAssertEqual(status, 0, log)
            let readme = try String(contentsOfFile: sampleDir + "/README.md", encoding: .utf8)
            XCTAssertTrue(readme.contains((["cc -std=c99 -O2 -shared -fPIC -I ../../SDK/include -o", library, source] + libs).joined(separator: " ")), "\(folder)/README.md gives that command")
            let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
            XCTAssertEqual(registry.failures.map(\.description), [])
            XCTAssertEqual(registry.components.map(\.id), [id])
            XCTAssertEqual(registry.libraries.first?.name, name)
        }
    }

    func testSwiftSample_BuildsAsItsOwnPackageFromTheSDKAlone() throws {
        guard (try? PluginFixtures.run(["swift", "--version"]))?.0 == 0 else { throw Prerequisite.missing("no swift toolchain on PATH") }
        let sample = PluginFixtures.repoRoot.appendingPathComponent("Samples/swift-sparsemax-gate").path
        let manifest = try String(contentsOfFile: sample + "/Package.swift", encoding: .utf8)
        XCTAssertTrue(manifest.contains(".package(path: \"../../SDK\")"))
        XCTAssertFalse(manifest.contains("EspalierCore") || manifest.contains("EspalierHost"), "a plugin never depends on the host")
        let scratch = try PluginFixtures.tempDir("sparsemax-build")
        let (status, log) = try PluginFixtures.run(["swift", "build", "-c", "release", "--package-path", sample, "--scratch-path", scratch])
        XCTAssertEqual(status, 0, log)
        let lib = scratch + "/release/libespalier-sample-sparsemax.so"
        XCTAssertTrue(FileManager.default.fileExists(atPath: lib), log)
        let (nmStatus, symbols) = try PluginFixtures.run(["nm", "-D", "--defined-only", lib])
        XCTAssertEqual(nmStatus, 0)
        XCTAssertTrue(symbols.contains("espalier_plugin_entry_v1"), "the entry is exported")
        // Loaded in a process of its own (the tree's copy is already loaded in this one), through --plugin-dir.
        let dir = try PluginFixtures.tempDir("sparsemax-plugin")
        try FileManager.default.copyItem(atPath: lib, toPath: dir + "/libespalier-sample-sparsemax.so")
        let espalier = try Prerequisite.espalierBinary()
        let (_, listing) = try PluginFixtures.run([espalier, "plugins", "--plugin-dir", dir, "--json"])
        // Beside the tree's own copy it is refused as a duplicate id: proof that it loaded, passed every other check, and was compared.
        XCTAssertTrue(listing.contains(dir + "/libespalier-sample-sparsemax.so") && listing.contains("duplicate id 'org.example.gate.sparsemax/1'"), listing)
    }
}
