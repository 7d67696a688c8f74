// The IO module: safetensors round trips (bit-exact values including NaN payloads, -0, infinities
// and subnormals; metadata; byte-identical output for identical state whatever the insertion
// order), the header layout, loading into tensors with name and shape checks, every corrupt-file
// case with its error naming the file and the tensor, and atomic file replacement (content
// replaced, permissions kept, symlinks followed, no temporaries left, old file kept on failure).

import EspalierCore
import EspalierTestSupport
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class IOTests: TemporaryDirectoryTestCase {

    func listing() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }

    // MARK: Fixtures

    /// Values that a text format would mangle: NaN payloads, signed zero, infinities, subnormals.
    let special: [Float] = [
        0, -0.0, 1, -1, .pi, .infinity, -.infinity, Float(bitPattern: 0x7FC0_1234), Float(bitPattern: 0xFFA0_0001),
        .leastNonzeroMagnitude, .greatestFiniteMagnitude, Float(bitPattern: 0x0001_1BB8), 3.3333333,
    ]

    func sample() -> SafeTensorsFile {
        var f = SafeTensorsFile(metadata: ["format": "pt", "step": "1200", "note": "quotes \" and \\ and\nnewline, ünïcødé ✓"])
        f["cell0/edge3/sep_conv_3x3/dw1.weight"] = .init(shape: [16, 1, 3, 3], values: (0..<144).map { Float($0) * 0.37 - 20 })
        f["alpha_normal"] = .init(shape: [14, 8], values: (0..<112).map { sinf(Float($0)) * 1e-3 })
        f["special"] = .init(shape: [special.count], values: special)
        f["scalar"] = .init(shape: [], values: [42])
        f["empty"] = .init(shape: [0, 4], values: [])
        return f
    }

    /// Bytes of a safetensors file with the given header text and data block (header padded to 8).
    func rawFile(header: String, data: [UInt8], pad: Bool = true) -> Data {
        var h = Array(header.utf8)
        while pad, h.count % 8 != 0 { h.append(0x20) }
        var out = Data()
        var n = UInt64(h.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(contentsOf: h)
        out.append(contentsOf: data)
        return out
    }

    func bits(_ v: [Float]) -> [UInt32] { v.map(\.bitPattern) }

    #if canImport(Glibc)
    let fsizeResource = __rlimit_resource_t(RLIMIT_FSIZE.rawValue)
    #else
    let fsizeResource = RLIMIT_FSIZE
    #endif

    // MARK: Safetensors round trip

    func testSafeTensors_RoundTripIsBitExact() throws {
        let f = sample()
        let bytes = try f.encoded()
        let g = try SafeTensorsFile.decode(bytes, file: "mem.safetensors")
        XCTAssertEqual(g.names, f.names)
        XCTAssertEqual(g.metadata, f.metadata)
        for name in f.names {
            XCTAssertEqual(g[name]!.shape, f[name]!.shape, name)
            XCTAssertEqual(bits(g[name]!.values), bits(f[name]!.values), name)
        }
        XCTAssertEqual(g.source, "mem.safetensors")
        // And through a file on disk.
        let p = path("ck.safetensors")
        try f.write(path: p)
        let h = try SafeTensorsFile.read(path: p)
        XCTAssertEqual(h.source, p)
        XCTAssertEqual(try h.encoded(), bytes)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: p)), bytes)
    }

    func testSafeTensors_OutputIsDeterministic() throws {
        let f = sample()
        // The same content inserted in the opposite order gives the same bytes.
        var g = SafeTensorsFile()
        for name in f.names.reversed() { g[name] = f[name] }
        for k in f.metadata.keys.sorted().reversed() { g.metadata[k] = f.metadata[k] }
        XCTAssertEqual(try f.encoded(), try g.encoded())
        XCTAssertEqual(try f.encoded(), try f.encoded())
        // Two files written from identical state are byte-identical.
        try f.write(path: path("a.safetensors"))
        try g.write(path: path("b.safetensors"))
        XCTAssertEqual(FileManager.default.contents(atPath: path("a.safetensors")),
                       FileManager.default.contents(atPath: path("b.safetensors")))
    }

    func testSafeTensors_HeaderLayout() throws {
        var f = SafeTensorsFile(metadata: ["k": "v"])
        f["b"] = .init(shape: [2], values: [1, 2])
        f["a"] = .init(shape: [1, 3], values: [3, 4, 5])
        let bytes = [UInt8](try f.encoded())
        let n = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual(n % 8, 0, "header padded to a multiple of 8")
        XCTAssertEqual(bytes.count, 8 + n + 4 * 5)
        let headerText = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        XCTAssertTrue(headerText.hasPrefix("{"))
        XCTAssertEqual(headerText.trimmingCharacters(in: .whitespaces).last, "}")
        XCTAssertTrue(headerText.hasSuffix(String(repeating: " ", count: n - headerText.trimmingCharacters(in: .whitespaces).utf8.count)))
        let json = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
        XCTAssertEqual(json["__metadata__"] as? [String: String], ["k": "v"])
        let a = json["a"] as! [String: Any], b = json["b"] as! [String: Any]
        XCTAssertEqual(a["dtype"] as? String, "F32")
        XCTAssertEqual(a["shape"] as? [Int], [1, 3])
        XCTAssertEqual(a["data_offsets"] as? [Int], [0, 12], "sorted by name: a first")
        XCTAssertEqual(b["data_offsets"] as? [Int], [12, 20])
        // Raw little-endian float32 data.
        let first = UInt32(bytes[8 + n]) | UInt32(bytes[9 + n]) << 8 | UInt32(bytes[10 + n]) << 16 | UInt32(bytes[11 + n]) << 24
        XCTAssertEqual(first, Float(3).bitPattern)
    }

    func testSafeTensors_ReadsFileWrittenByHand() throws {
        // A header in another key order, with whitespace, metadata last, no padding: still valid.
        let header = #"{ "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}, "s": {"shape": [], "dtype": "F32", "data_offsets": [0, 4]}, "__metadata__": {"x": "y"} }"#
        let data: [UInt8] = [0, 0, 0x80, 0x3F] + [0, 0, 0, 0x40] + [0, 0, 0x40, 0x40]
        let f = try SafeTensorsFile.decode(rawFile(header: header, data: data, pad: false), file: "hand.safetensors")
        XCTAssertEqual(f["s"]!.values, [1])
        XCTAssertEqual(f["s"]!.shape, [])
        XCTAssertEqual(f["w"]!.values, [2, 3])
        XCTAssertEqual(f.metadata, ["x": "y"])
    }

    func testSafeTensors_EncodeRejectsInconsistentEntries() {
        var f = SafeTensorsFile()
        f["w"] = .init(shape: [2, 2], values: [1, 2, 3])
        XCTAssertThrowsError(try f.encoded()) { XCTAssertTrue("\($0)".contains("'w'"), "\($0)") }
        var g = SafeTensorsFile()
        g["__metadata__"] = .init(shape: [1], values: [1])
        XCTAssertThrowsError(try g.encoded()) { XCTAssertTrue("\($0)".contains("__metadata__"), "\($0)") }
    }

    // MARK: Tensors

    func testSafeTensors_WritesAndLoadsNamedTensors() throws {
        let acc = MemoryAccountant()
        let w = try randomTensor([4, 3, 3, 3], acc, seed: 1)
        let b = try randomTensor([4], acc, seed: 2)
        let p = path("net.safetensors")
        try SafeTensorsFile.write(["conv.weight": w, "conv.bias": b], metadata: ["epoch": "3"], to: p)

        let w2 = try Tensor.zeros([4, 3, 3, 3], category: .parameters, accountant: acc)
        let b2 = try Tensor.zeros([4], category: .parameters, accountant: acc)
        let meta = try SafeTensorsFile.load(path: p, into: [("conv.weight", w2), ("conv.bias", b2)], strict: true)
        XCTAssertEqual(meta, ["epoch": "3"])
        XCTAssertEqual(bits(w2.array), bits(w.array))
        XCTAssertEqual(bits(b2.array), bits(b.array))

        // A dry-run (virtual) tensor cannot be saved, but can be checked against a checkpoint.
        let dry = MemoryAccountant(mode: .dryRun)
        let v = try Tensor(shape: [4], category: .parameters, accountant: dry)
        XCTAssertThrowsError(try SafeTensorsFile(named: ["v": v]))
        XCTAssertNoThrow(try SafeTensorsFile.load(path: p, into: [("conv.bias", v)]))
    }

    func testSafeTensors_LoadChecksNamesAndShapesBeforeWriting() throws {
        let acc = MemoryAccountant()
        let p = path("net.safetensors")
        try SafeTensorsFile.write(["a.weight": try randomTensor([2, 3], acc, seed: 3), "b.weight": try randomTensor([5], acc, seed: 4)], to: p)
        let a = try Tensor.filled([2, 3], value: 7, category: .parameters, accountant: acc)
        let wrong = try Tensor.filled([3, 2], value: 7, category: .parameters, accountant: acc)
        let missing = try Tensor.filled([1], value: 7, category: .parameters, accountant: acc)

        assertDataError(try SafeTensorsFile.load(path: p, into: [("a.weight", a), ("b.weight", wrong)]),
                        contains: [p, "'b.weight'", "[5]", "[3, 2]"])
        XCTAssertEqual(a.array, Array(repeating: 7, count: 6), "nothing is written when a later tensor fails")
        assertDataError(try SafeTensorsFile.load(path: p, into: [("a.weight", a), ("c.weight", missing)]),
                        contains: [p, "'c.weight'", "missing"])
        XCTAssertEqual(a.array, Array(repeating: 7, count: 6))
        // Strict: tensors in the file that nobody asked for are an error.
        assertDataError(try SafeTensorsFile.load(path: p, into: [("a.weight", a)], strict: true), contains: [p, "'b.weight'"])
        XCTAssertNoThrow(try SafeTensorsFile.load(path: p, into: [("a.weight", a)]))
        XCTAssertNotEqual(a.array, Array(repeating: 7, count: 6))
    }

    // MARK: Corrupt files

    func testSafeTensors_CorruptFilesNameFileAndTensor() throws {
        let f = "bad.safetensors"
        let four: [UInt8] = [0, 0, 0x80, 0x3F]
        func decode(_ d: Data) throws -> SafeTensorsFile { try SafeTensorsFile.decode(d, file: f) }
        func entry(_ name: String, _ shape: String, _ offsets: String, dtype: String = "F32") -> String {
            "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":\(offsets)}"
        }

        // Too short, header length beyond the file, absurd header length.
        assertDataError(try decode(Data([1, 2, 3])), contains: [f, "3 bytes", "too short"])
        assertDataError(try decode(Data()), contains: [f, "too short"])
        var beyond = rawFile(header: "{" + entry("w", "[1]", "[0,4]") + "}", data: four)
        beyond[0] = 200
        assertDataError(try decode(beyond), contains: [f, "header length 200", "truncated"])
        assertDataError(try decode(Data([0, 0, 0, 0, 0, 0, 0, 1] + Array(repeating: 0x20, count: 8))), contains: [f, "limit"])
        // Invalid JSON, or not an object.
        assertDataError(try decode(rawFile(header: "{\"w\": {\"dtype\": ", data: [])), contains: [f, "not valid JSON"])
        assertDataError(try decode(rawFile(header: "[1, 2]", data: [])), contains: [f, "'{'"])
        assertDataError(try decode(rawFile(header: "{\"w\": 3}", data: [])), contains: [f, "'w'", "object"])
        // Dtype other than F32, or missing fields.
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[2]", "[0,4]", dtype: "F16") + "}", data: four)),
                        contains: [f, "'w'", "F16", "only F32"])
        assertDataError(try decode(rawFile(header: "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data: four)),
                        contains: [f, "'w'", "dtype"])
        assertDataError(try decode(rawFile(header: "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", data: four)),
                        contains: [f, "'w'", "shape"])
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[-1]", "[0,4]") + "}", data: four)),
                        contains: [f, "'w'", "shape"])
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[1.5]", "[0,4]") + "}", data: four)),
                        contains: [f, "'w'", "shape"])
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[1]", "[0]") + "}", data: four)),
                        contains: [f, "'w'", "data_offsets"])
        // Offsets out of range, reversed, not matching the shape.
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[2]", "[0,8]") + "}", data: four)),
                        contains: [f, "'w'", "[0, 8]", "past the end"])
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[0]", "[4,0]") + "}", data: four)),
                        contains: [f, "'w'", "[4, 0]"])
        assertDataError(try decode(rawFile(header: "{" + entry("w", "[2]", "[0,4]") + "}", data: four)),
                        contains: [f, "'w'", "needs 8"])
        // Overlap, hole, trailing garbage.
        assertDataError(try decode(rawFile(header: "{" + entry("a", "[2]", "[0,8]") + "," + entry("b", "[1]", "[4,8]") + "}",
                                           data: four + four)),
                        contains: [f, "'b'", "overlap", "'a'"])
        assertDataError(try decode(rawFile(header: "{" + entry("a", "[1]", "[0,4]") + "," + entry("b", "[1]", "[8,12]") + "}",
                                           data: four + four + four)),
                        contains: [f, "'b'", "belong to no tensor"])
        assertDataError(try decode(rawFile(header: "{" + entry("a", "[1]", "[0,4]") + "}", data: four + [1, 2, 3])),
                        contains: [f, "3 trailing bytes"])
        // Metadata that is not string → string.
        assertDataError(try decode(rawFile(header: "{\"__metadata__\":{\"step\":3}}", data: [])), contains: [f, "step", "string"])

        // A file on disk: a missing file, a directory, a truncated copy of a good file.
        assertDataError(try SafeTensorsFile.read(path: path("nope.safetensors")), contains: [path("nope.safetensors"), "no such file"])
        assertDataError(try SafeTensorsFile.read(path: dir), contains: [dir, "directory"])
        let good = try sample().encoded()
        let cut = path("cut.safetensors")
        try good.prefix(good.count - 3).write(to: URL(fileURLWithPath: cut))
        assertDataError(try SafeTensorsFile.read(path: cut), contains: [cut, "past the end"])
    }

    // MARK: Atomic files

    func testAtomicFile_ReplacesContentAndLeavesNoTemporaries() throws {
        let p = path("state.json")
        try AtomicFile.write(Data("first".utf8), to: p)
        XCTAssertEqual(FileManager.default.contents(atPath: p), Data("first".utf8))
        try AtomicFile.write(Data("second, longer".utf8), to: p)
        XCTAssertEqual(FileManager.default.contents(atPath: p), Data("second, longer".utf8))
        try AtomicFile.write("", to: p)
        XCTAssertEqual(FileManager.default.contents(atPath: p), Data())
        let big = Data((0..<3_000_000).map { UInt8($0 % 251) })
        try AtomicFile.write(big, to: p)
        XCTAssertEqual(FileManager.default.contents(atPath: p), big)
        XCTAssertEqual(try listing(), ["state.json"], "no temporary files left behind")
    }

    func testAtomicFile_KeepsPermissionsAndFollowsSymlinks() throws {
        let p = path("secret.txt")
        try AtomicFile.write("a", to: p)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: p)
        try AtomicFile.write("b", to: p)
        let mode = try FileManager.default.attributesOfItem(atPath: p)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)

        let link = path("latest")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "secret.txt")
        try AtomicFile.write("through the link", to: link)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: link), "secret.txt", "the link stays a link")
        XCTAssertEqual(FileManager.default.contents(atPath: p), Data("through the link".utf8))
        XCTAssertEqual(try listing(), ["latest", "secret.txt"])
    }

    func testAtomicFile_FailureKeepsOldFileAndRemovesTemporary() throws {
        // The target is a non-empty directory: rename must fail, nothing may change.
        let target = path("occupied")
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: target + "/inside"))
        assertDataError(try AtomicFile.write(Data("x".utf8), to: target), contains: [target, "directory"])
        XCTAssertEqual(try listing(), ["occupied"])
        XCTAssertEqual(FileManager.default.contents(atPath: target + "/inside"), Data("keep".utf8))

        // A write that fails half-way (file-size limit → EFBIG): the old file stays, the temporary goes.
        let old = path("old.bin")
        try AtomicFile.write("old", to: old)
        var saved = rlimit()
        XCTAssertEqual(getrlimit(fsizeResource, &saved), 0)
        var small = saved
        small.rlim_cur = 1024
        let previousHandler = signal(SIGXFSZ, SIG_IGN)
        XCTAssertEqual(setrlimit(fsizeResource, &small), 0)
        let result = Result { try AtomicFile.write(Data(count: 100_000), to: old) }
        XCTAssertEqual(setrlimit(fsizeResource, &saved), 0)
        signal(SIGXFSZ, previousHandler)
        XCTAssertThrowsError(try result.get()) { error in
            XCTAssertTrue("\(error)".contains(old) && "\(error)".contains("old file is unchanged"), "\(error)")
        }
        XCTAssertEqual(FileManager.default.contents(atPath: old), Data("old".utf8))
        XCTAssertEqual(try listing(), ["occupied", "old.bin"])

        // A directory that does not exist.
        let nowhere = path("no/such/dir/file.bin")
        assertDataError(try AtomicFile.write(Data("x".utf8), to: nowhere), contains: [nowhere, "does not exist"])
        assertDataError(try AtomicFile.write(Data(), to: ""), contains: ["empty path"])
    }

    // MARK: Snake-case JSON (result.json, a comparison's files)

    /// Every field of a training's result.json survives write and load, under snake-case keys.
    func testTrainingOutcome_RoundTripsEveryFieldUnderSnakeCaseKeys() throws {
        let outcome = TrainingOutcome(testAccuracy: 0.8468, testImages: 10000, trainImages: 9999, epochs: 2, seconds: 96.5,
                                      parameters: 123_457, forwardFlops: 45_678_901)
        try outcome.write(folder: dir)
        XCTAssertEqual(try TrainingOutcome.load(folder: dir), outcome)
        let text = try String(contentsOfFile: path(TrainingOutcome.name), encoding: .utf8)
        let keys = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]).keys.sorted()
        XCTAssertEqual(keys, ["epochs", "forward_flops", "parameters", "seconds", "test_accuracy", "test_images", "train_images"])
        XCTAssertTrue(text.hasSuffix("}\n"), "one final newline")
        try AtomicFile.write(Data("{\"test_accuracy\": 0.5}".utf8), to: path(TrainingOutcome.name))
        assertDataError(try TrainingOutcome.load(folder: dir), contains: [path(TrainingOutcome.name), "no readable training result"])
    }
}
