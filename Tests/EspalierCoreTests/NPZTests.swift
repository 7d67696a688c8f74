// NumPy .npz datasets (NPZ.dataset): stored and deflated zip members, the .npy header, uint8 and
// float32 images in NHWC, NCHW and (N, H, W) layouts, labels of several integer dtypes, and an
// error naming the file and the fix for each kind of bad input.

import EspalierCore
import EspalierTestSupport
import Foundation
import XCTest

final class NPZTests: TemporaryDirectoryTestCase {
    typealias W = DataFileWriters

    func save(_ bytes: [UInt8], _ name: String = "d.npz") throws -> String {
        try Data(bytes).write(to: URL(fileURLWithPath: path(name)))
        return path(name)
    }

    func assertError(_ bytes: [UInt8], split: Dataset.Split = .train, _ expected: [String], line: UInt = #line) throws {
        let file = try save(bytes, "bad\(line).npz")
        XCTAssertThrowsError(try NPZ.dataset(path: file, split: split, accountant: MemoryAccountant()), line: line) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains(file), "names the file: \(text)", line: line)
            for word in expected { XCTAssertTrue(text.contains(word), "'\(word)' in: \(text)", line: line) }
        }
    }

    func testStoredAndDeflatedMembers_NHWCUint8_ConvertedToNCHW() throws {
        let file = try save(try DataFixtures.npz(train: 6, test: 4, classes: 3))
        let acc = MemoryAccountant()
        let train = try NPZ.dataset(path: file, split: .train, accountant: acc)
        let test = try NPZ.dataset(path: file, split: .test, accountant: acc)
        XCTAssertEqual([train.count, train.channels, train.height, train.width, train.numClasses], [6, 3, 8, 8, 3])
        XCTAssertEqual(test.count, 4)
        XCTAssertEqual(train.labels, [0, 1, 2, 0, 1, 2])
        XCTAssertEqual(test.labels, [1, 2, 0, 1], "the deflated members")
        // NHWC → NCHW: image 1 of the test set is class 2's picture with index 1.
        let hwc = DataFixtures.pixels(class: 2, index: 1, width: 8, height: 8, channels: 3)
        let img = Array(test.image(1))
        for c in 0..<3 { for p in 0..<64 { XCTAssertEqual(img[c * 64 + p], hwc[p * 3 + c]) } }
        let (mean, std) = Dataset.channelStatistics(train.images, channels: 3, pixelsPerChannel: 64)
        XCTAssertEqual(train.mean, mean, "measured on the training images")
        XCTAssertEqual(train.std, std)
        XCTAssertEqual(acc.currentTotal, train.byteCount + test.byteCount)
    }

    func testFloat32_NCHW_ZeroToOneScaled_And_Gray_ZeroTo255_BigEndianLabels() throws {
        // NCHW float32 in [0, 1]: 0.5 → 127.5 → 128; 1 → 255.
        let x = (0..<(2 * 1 * 2 * 2)).map { Float($0 % 2 == 0 ? 0.5 : 1) }
        let y = W.bytes([Int32(1), Int32(0)].map { $0.bigEndian })
        var members: [(name: String, data: [UInt8], deflate: Bool)] = [
            ("x_train.npy", W.npy(descr: "<f4", shape: [2, 1, 2, 2], data: W.bytes(x)), true),
            ("y_train.npy", W.npy(descr: ">i4", shape: [2, 1], data: y), false),
            ("x_test.npy", W.npy(descr: "<f4", shape: [1, 2, 2], data: W.bytes([3, 200, 255, 0] as [Float])), false),
            ("y_test.npy", W.npy(descr: "|u1", shape: [1], data: [1]), true),
        ]
        let file = try save(try W.zip(members))
        let train = try NPZ.dataset(path: file, split: .train, accountant: MemoryAccountant())
        XCTAssertEqual([train.channels, train.height, train.width, train.numClasses], [1, 2, 2, 2])
        XCTAssertEqual(train.images, [128, 255, 128, 255, 128, 255, 128, 255])
        XCTAssertEqual(train.labels, [1, 0])
        let test = try NPZ.dataset(path: file, split: .test, accountant: MemoryAccountant())
        XCTAssertEqual(test.images, [3, 200, 255, 0], "a float array above 1 is taken as 0…255")
        // A value above 255 is an error naming the member.
        members[2] = ("x_test.npy", W.npy(descr: "<f4", shape: [1, 2, 2], data: W.bytes([3, 300, 255, 0] as [Float])), false)
        try assertError(try W.zip(members), split: .test, ["x_test", "above 255"])
    }

    /// The four members with one replaced (or removed, when `data` is nil).
    func npz(replacing name: String, with data: [UInt8]?) throws -> [UInt8] {
        let x = W.npy(descr: "|u1", shape: [4, 2, 2], data: [UInt8](repeating: 9, count: 16))
        let y = W.npy(descr: "<i8", shape: [4], data: W.bytes([0, 1, 2, 1] as [Int64]))
        var members = [("x_train", x), ("y_train", y), ("x_test", x), ("y_test", y)]
        if let data { members = members.map { $0.0 == name ? ($0.0, data) : $0 } } else { members.removeAll { $0.0 == name } }
        return try W.zip(members.map { ($0.0 + ".npy", $0.1, $0.0.hasSuffix("test")) })
    }

    func testErrors_NameTheFileAndTheFix() throws {
        // x and y of different lengths
        try assertError(try npz(replacing: "y_train", with: W.npy(descr: "<i8", shape: [3], data: W.bytes([0, 1, 2] as [Int64]))),
                        ["x_train holds 4 images", "y_train 3 labels"])
        // a negative label, a test label beyond the training labels
        try assertError(try npz(replacing: "y_train", with: W.npy(descr: "<i8", shape: [4], data: W.bytes([0, -1, 2, 1] as [Int64]))),
                        ["y_train[1] is -1", "renumber"])
        try assertError(try npz(replacing: "y_test", with: W.npy(descr: "<i2", shape: [4], data: W.bytes([0, 1, 5, 1] as [Int16]))),
                        split: .test, ["y_test[2] is 5", "0…2"])
        // unsupported dtypes: float64 images, float labels
        try assertError(try npz(replacing: "x_train", with: W.npy(descr: "<f8", shape: [4, 2, 2], data: [UInt8](repeating: 0, count: 128))),
                        ["'<f8'", ".astype(np.uint8)"])
        try assertError(try npz(replacing: "y_train", with: W.npy(descr: "<f4", shape: [4], data: W.bytes([0, 1, 2, 1] as [Float]))),
                        ["'<f4'", "np.int64"])
        // a missing member
        try assertError(try npz(replacing: "y_test", with: nil), split: .test, ["no member y_test", "np.savez"])
        // a truncated file (the central directory is gone) and a truncated member
        let good = try npz(replacing: "none", with: nil)
        try assertError(Array(good.prefix(good.count - 40)), ["truncated"])
        try assertError(try npz(replacing: "x_train", with: Array(W.npy(descr: "|u1", shape: [4, 2, 2], data: [UInt8](repeating: 9, count: 16)).dropLast(5))),
                        ["x_train", "truncated"])
        // a damaged byte in the first member's data (local header 30 + name 11 bytes, .npy header 64) fails its CRC
        var damaged = good
        damaged[30 + 11 + 64 + 3] ^= 0xFF
        try assertError(damaged, ["x_train.npy", "CRC"])
        // Fortran order, a shape that is not images, not a zip at all
        try assertError(try npz(replacing: "x_train", with: W.npy(descr: "|u1", shape: [4, 2, 2], data: [UInt8](repeating: 0, count: 16), fortranOrder: true)),
                        ["Fortran order", "np.ascontiguousarray"])
        try assertError(try npz(replacing: "x_train", with: W.npy(descr: "|u1", shape: [4, 2, 2, 5], data: [UInt8](repeating: 0, count: 80))),
                        ["shape [4, 2, 2, 5]"])
        try assertError(W.npy(descr: "|u1", shape: [1], data: [0]), ["single .npy"])
    }

    /// Zips written by Python's zipfile (Tests/FuzzTesting/make-corpus.py, the fuzz seeds) read as written.
    func testZipsWrittenByPython_Read() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("FuzzTesting/Corpus/FuzzNPZ")
        for name in ["uint8-nhwc-stored", "uint8-nhwc-deflated"] {
            let ds = try NPZ.dataset(bytes: [UInt8](try Data(contentsOf: corpus.appendingPathComponent(name))), file: name, split: .test, accountant: MemoryAccountant())
            XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width, ds.numClasses], [3, 3, 2, 2, 3], name)
            XCTAssertEqual(Array(ds.image(0)), [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11], "NHWC bytes 0…11 as NCHW planes")
        }
        let gray = try NPZ.dataset(bytes: [UInt8](try Data(contentsOf: corpus.appendingPathComponent("float-nchw-gray"))), file: "f", split: .train, accountant: MemoryAccountant())
        XCTAssertEqual(gray.images, [128, 255, 0, 64, 128, 255, 0, 64])
        XCTAssertEqual(gray.labels, [1, 0])
    }

    func testHeaderParser_VersionsAndPythonLiterals() throws {
        let dict = try NPZ.parseNPY(W.npy(descr: "<u2", shape: [2, 3], data: W.bytes([1, 2, 3, 4, 5, 6] as [UInt16])), member: "m", file: "f")
        XCTAssertEqual(dict.descr, "<u2")
        XCTAssertEqual(dict.shape, [2, 3])
        XCTAssertEqual(dict.data.count, 12)
        // Version 2 (4-byte header length), a scalar shape ().
        var v2 = W.npy(descr: "|u1", shape: [], data: [42])
        let headerLength = Int(v2[8]) | Int(v2[9]) << 8
        v2[6] = 2
        v2.replaceSubrange(8..<10, with: [UInt8(headerLength & 0xFF), UInt8(headerLength >> 8), 0, 0])
        let scalar = try NPZ.parseNPY(v2, member: "m", file: "f")
        XCTAssertEqual(scalar.shape, [])
        XCTAssertEqual(scalar.data, [42])
        XCTAssertThrowsError(try NPZ.parseNPY([0x93] + Array("NUMPX".utf8) + [1, 0, 0, 0], member: "m", file: "f")) { e in
            XCTAssertTrue("\(e)".contains("member m") && "\(e)".contains("magic"), "\(e)")
        }
    }
}
