// NumPy .npz datasets (`--dataset npz --data-dir FILE.npz`): a zip (stored or deflated members,
// zip64 extra fields read; numpy's np.savez / np.savez_compressed write these) holding the .npy
// arrays x_train, y_train, x_test, y_test. Rules:
//   - images: uint8, or float32 — a float array whose maximum is ≤ 1 is taken as [0, 1] and scaled
//     by 255, otherwise as [0, 255]; values are rounded to the nearest integer, and a value below 0,
//     above the range or not a number is an error;
//   - layout by shape: (N, H, W) is grayscale; (N, H, W, C) with C = 1 or 3 (the last dimension
//     checked first) is NHWC; (N, C, H, W) with C = 1 or 3 is NCHW;
//   - labels: any integer dtype, shape (N) or (N, 1); the class count is max(y_train) + 1, and every
//     label (train and test) must be in 0…max(y_train).
// Mean and std are measured on the split read. Not here: pickled object arrays, Fortran order,
// class-name members, other zip compression methods, encrypted zips.

import CZlib
import Foundation

/// One array of a .npy file: its dtype descriptor ("<f4", "|u1", …), shape and raw little- or
/// big-endian bytes (C order).
public struct NPYArray: Sendable {
    public let descr: String
    public let shape: [Int]
    public let data: [UInt8]
    public var count: Int { shape.reduce(1, *) }
}

public enum NPZ {
    public static let requiredMembers = ["x_train", "y_train", "x_test", "y_test"]
    static let saveHint = "write it with np.savez(FILE, x_train=…, y_train=…, x_test=…, y_test=…) (or np.savez_compressed)"

    /// The members of the zip held in `bytes`, by name, decompressed and CRC-checked.
    /// Errors name `file`.
    public static func members(_ bytes: [UInt8], file: String) throws -> [String: [UInt8]] {
        func fail(_ problem: String) -> EspalierError { .data(file: file, problem: problem) }
        let truncated = "is truncated or not a zip (.npz) file; \(saveHint) and copy it again"
        func u16(_ at: Int) throws -> Int {
            guard at >= 0, at + 2 <= bytes.count else { throw fail(truncated) }
            return Int(bytes[at]) | Int(bytes[at + 1]) << 8
        }
        func u32(_ at: Int) throws -> Int {
            let low = try u16(at), high = try u16(at + 2)
            return low | high << 16
        }
        func u64(_ at: Int) throws -> Int {
            let low = try u32(at), high = try u32(at + 4)
            let v = UInt64(low) | UInt64(high) << 32
            guard v < 1 << 48 else { throw fail("declares a size of \(v) bytes; the file is damaged") }
            return Int(v)
        }
        // The end-of-central-directory record: the last "PK\5\6" within 64 KiB + 22 bytes of the end.
        var eocd = -1
        var i = bytes.count - 22
        while i >= max(0, bytes.count - 22 - 65535) {
            if bytes[i] == 0x50 && bytes[i + 1] == 0x4B && bytes[i + 2] == 5 && bytes[i + 3] == 6 { eocd = i; break }
            i -= 1
        }
        guard eocd >= 0 else {
            throw fail(bytes.count >= 4 && bytes[0] == 0x93 && bytes[1] == 0x4E ? "is a single .npy array, not an .npz; \(saveHint)" : truncated)
        }
        var entries = try u16(eocd + 10)
        var cdOffset = try u32(eocd + 16)
        // Zip64: the real counts are in the zip64 end record, found through its locator just before.
        if entries == 0xFFFF || cdOffset == 0xFFFF_FFFF, eocd >= 20, try u32(eocd - 20) == 0x0706_4B50 {
            let record = try u64(eocd - 20 + 8)
            guard try u32(record) == 0x0606_4B50 else { throw fail(truncated) }
            entries = try u64(record + 32)
            cdOffset = try u64(record + 48)
        }
        var out: [String: [UInt8]] = [:]
        var at = cdOffset
        for _ in 0..<entries {
            guard try u32(at) == 0x0201_4B50 else { throw fail(truncated) }
            let flags = try u16(at + 8), method = try u16(at + 10)
            let crc = UInt32(try u32(at + 16))
            var compressed = try u32(at + 20), size = try u32(at + 24)
            let nameLength = try u16(at + 28), extraLength = try u16(at + 30), commentLength = try u16(at + 32)
            var local = try u32(at + 42)
            guard at + 46 + nameLength <= bytes.count else { throw fail(truncated) }
            let name = String(decoding: bytes[(at + 46)..<(at + 46 + nameLength)], as: UTF8.self)
            // Zip64 extra field (id 1): 8-byte values for those fields that are 0xFFFFFFFF, in this order.
            var e = at + 46 + nameLength
            let extraEnd = e + extraLength
            while e + 4 <= extraEnd {
                let id = try u16(e), length = try u16(e + 2)
                if id == 1 {
                    var f = e + 4
                    if size == 0xFFFF_FFFF { size = try u64(f); f += 8 }
                    if compressed == 0xFFFF_FFFF { compressed = try u64(f); f += 8 }
                    if local == 0xFFFF_FFFF { local = try u64(f) }
                }
                e += 4 + length
            }
            at = extraEnd + commentLength
            guard flags & 1 == 0 else { throw fail("member \(name) is encrypted; \(saveHint) without encryption") }
            // The local header repeats the name and has its own extra field; the data follows it.
            guard try u32(local) == 0x0403_4B50 else { throw fail(truncated) }
            let localName = try u16(local + 26), localExtra = try u16(local + 28)
            let start = local + 30 + localName + localExtra
            guard start + compressed <= bytes.count else {
                throw fail("member \(name) ends at byte \(start + compressed) but the file has \(bytes.count): it \(truncated)")
            }
            let raw = bytes[start..<(start + compressed)]
            var data: [UInt8]
            switch method {
            case 0:
                guard compressed == size else { throw fail("member \(name) is stored with \(compressed) bytes but declares \(size); the file is damaged") }
                data = Array(raw)
            case 8:
                // Deflate expands at most 1032:1, so a larger claim is a damaged header (not an allocation to attempt).
                guard size / 1032 <= compressed + 1 else { throw fail("member \(name) declares \(size) bytes from \(compressed) compressed; the file is damaged") }
                data = try inflateRaw(raw, size: size) { fail("member \(name) cannot be decompressed (zlib: \($0)); the file is damaged or truncated, copy it again") }
            default:
                throw fail("member \(name) uses zip compression method \(method); only stored (0) and deflated (8) members are read: \(saveHint)")
            }
            let actual = data.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, UInt32($0.count))) }
            guard actual == crc else {
                throw fail("member \(name) fails its CRC check (the data is damaged); copy the file again")
            }
            out[name] = data
        }
        return out
    }

    /// Inflates raw deflate data (no zlib or gzip header: windowBits −15) to exactly `size` bytes.
    static func inflateRaw(_ raw: ArraySlice<UInt8>, size: Int, error: (String) -> EspalierError) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw error("inflateInit2 failed") }
        defer { inflateEnd(&stream) }
        var input = Array(raw)
        let rc: Int32 = input.withUnsafeMutableBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                stream.next_in = src.baseAddress
                stream.avail_in = UInt32(src.count)
                stream.next_out = dst.baseAddress
                stream.avail_out = UInt32(dst.count)
                return inflate(&stream, Z_FINISH)
            }
        }
        guard rc == Z_STREAM_END, Int(stream.total_out) == size else {
            if rc == Z_STREAM_END || rc == Z_BUF_ERROR && stream.avail_out == 0 {
                throw error("the data inflates to \(rc == Z_STREAM_END ? "\(stream.total_out)" : "more than \(size)") bytes, the zip declares \(size)")
            }
            throw error(stream.msg.map { String(cString: $0) } ?? (rc == Z_BUF_ERROR ? "the stream ends early" : "error \(rc)"))
        }
        return out
    }

    /// Parses a .npy file: magic "\x93NUMPY", version 1 (2-byte header length) or 2/3 (4-byte),
    /// then a Python dict literal with 'descr', 'fortran_order' and 'shape', then the data.
    public static func parseNPY(_ bytes: [UInt8], member: String, file: String) throws -> NPYArray {
        func fail(_ p: String) -> EspalierError { .data(file: file, problem: "member \(member): \(p)") }
        guard bytes.count >= 10, bytes[0..<6].elementsEqual([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]) else {
            throw fail("is not a .npy array (no \\x93NUMPY magic); \(saveHint)")
        }
        let major = bytes[6]
        let headerStart: Int, headerLength: Int
        switch major {
        case 1:
            headerStart = 10
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        case 2, 3:
            guard bytes.count >= 12 else { throw fail("the .npy header is truncated") }
            headerStart = 12
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        default: throw fail(".npy format version \(major) is not read (versions 1 to 3 are)")
        }
        guard headerStart + headerLength <= bytes.count else { throw fail("the .npy header is truncated") }
        let header = String(decoding: bytes[headerStart..<(headerStart + headerLength)], as: UTF8.self)
        let dict = try parseHeaderDict(header) { fail("the .npy header \(header.trimmingCharacters(in: .whitespacesAndNewlines)) \($0)") }
        guard case .string(let descr)? = dict["descr"] else { throw fail("the .npy header has no 'descr' string") }
        guard case .bool(let fortran)? = dict["fortran_order"] else { throw fail("the .npy header has no 'fortran_order'") }
        guard case .tuple(let shape)? = dict["shape"] else { throw fail("the .npy header has no 'shape' tuple") }
        guard !fortran else { throw fail("is in Fortran order; save np.ascontiguousarray(array) instead") }
        guard descr.count >= 3, descr.count <= 4, "<>|=".contains(descr.first!), let itemSize = Int(descr.dropFirst(2)), itemSize > 0, itemSize <= 16 else {
            throw fail("dtype '\(descr)' is not read; convert the array with .astype(np.uint8), .astype(np.float32) or, for labels, .astype(np.int64)")
        }
        var count = 1
        for d in shape {
            let (p, o) = count.multipliedReportingOverflow(by: d)
            guard d >= 0, !o, p < 1 << 40 else { throw fail("shape \(shape) is not a possible size") }
            count = p
        }
        let need = count * itemSize   // < 2⁴⁴: no overflow
        let dataStart = headerStart + headerLength
        guard bytes.count - dataStart >= need else {
            throw fail("is truncated: shape \(shape) of \(descr) needs \(need) bytes of data, the member holds \(bytes.count - dataStart)")
        }
        return NPYArray(descr: descr, shape: shape, data: Array(bytes[dataStart..<(dataStart + need)]))
    }

    enum HeaderValue: Equatable { case string(String), bool(Bool), tuple([Int]) }

    /// The header's dict: string keys, values a quoted string, True/False or a tuple of integers.
    static func parseHeaderDict(_ text: String, error: (String) -> EspalierError) throws -> [String: HeaderValue] {
        let s = Array(text.unicodeScalars)
        var i = 0
        func skip() { while i < s.count, s[i] == " " || s[i] == "\n" || s[i] == "\t" { i += 1 } }
        func expect(_ c: Unicode.Scalar) throws {
            skip()
            guard i < s.count, s[i] == c else { throw error("expected '\(c)' at character \(i)") }
            i += 1
        }
        func string() throws -> String {
            skip()
            guard i < s.count, s[i] == "'" || s[i] == "\"" else { throw error("expected a quoted string at character \(i)") }
            let q = s[i]; i += 1
            var out = ""
            while i < s.count, s[i] != q { out.unicodeScalars.append(s[i]); i += 1 }
            guard i < s.count else { throw error("has an unterminated string") }
            i += 1
            return out
        }
        func integer() throws -> Int {
            skip()
            var digits = ""
            while i < s.count, ("0"..."9").contains(s[i]) { digits.unicodeScalars.append(s[i]); i += 1 }
            if i < s.count, s[i] == "L" { i += 1 }   // Python 2's long literals
            guard let v = Int(digits) else { throw error("expected a dimension at character \(i)") }
            return v
        }
        var out: [String: HeaderValue] = [:]
        try expect("{")
        while true {
            skip()
            if i < s.count, s[i] == "}" { break }
            let key = try string()
            try expect(":")
            skip()
            guard i < s.count else { throw error("ends inside the dict") }
            if s[i] == "'" || s[i] == "\"" {
                out[key] = .string(try string())
            } else if s[i] == "(" {
                i += 1
                var dims: [Int] = []
                while true {
                    skip()
                    if i < s.count, s[i] == ")" { i += 1; break }
                    dims.append(try integer())
                    skip()
                    if i < s.count, s[i] == "," { i += 1 }
                }
                out[key] = .tuple(dims)
            } else if s[i...].starts(with: "True".unicodeScalars) {
                i += 4; out[key] = .bool(true)
            } else if s[i...].starts(with: "False".unicodeScalars) {
                i += 5; out[key] = .bool(false)
            } else {
                throw error("has a value of key '\(key)' that is not a string, a boolean or a tuple")
            }
            skip()
            if i < s.count, s[i] == "," { i += 1 }
        }
        return out
    }

    /// Integer labels of any integer dtype, as Int (shape (N) or (N, 1)).
    static func labels(_ a: NPYArray, member: String, file: String) throws -> [Int] {
        guard a.shape.count == 1 || (a.shape.count == 2 && a.shape[1] == 1) else {
            throw EspalierError.data(file: file, problem: "member \(member) has shape \(a.shape); labels are one integer per image, shape (N) or (N, 1)")
        }
        let kind = a.descr.dropFirst().first!, size = Int(a.descr.dropFirst(2))!
        let big = a.descr.first == ">"
        guard kind == "i" || kind == "u", [1, 2, 4, 8].contains(size) else {
            throw EspalierError.data(file: file, problem: "member \(member) has dtype '\(a.descr)'; labels must be integers: save them with .astype(np.int64)")
        }
        return (0..<a.count).map { n in
            var v: UInt64 = 0
            for b in 0..<size { v |= UInt64(a.data[n * size + (big ? b : size - 1 - b)]) << UInt64(8 * (size - 1 - b)) }
            if kind == "i" && size < 8 && v & (1 << UInt64(8 * size - 1)) != 0 { v |= ~0 << UInt64(8 * size) }   // sign-extend
            return kind == "i" ? Int(Int64(bitPattern: v)) : (v > UInt64(Int.max) ? Int.max : Int(v))
        }
    }

    /// Images (N, C, H, W) uint8 from a uint8 or float32 array in a layout decided by its shape (rules at the top).
    static func images(_ a: NPYArray, member: String, file: String) throws -> (pixels: [UInt8], count: Int, channels: Int, height: Int, width: Int) {
        func fail(_ p: String) -> EspalierError { .data(file: file, problem: "member \(member): \(p)") }
        let s = a.shape
        let dims: (n: Int, c: Int, h: Int, w: Int, nhwc: Bool)
        switch s.count {
        case 3: dims = (s[0], 1, s[1], s[2], true)
        case 4 where s[3] == 1 || s[3] == 3: dims = (s[0], s[3], s[1], s[2], true)
        case 4 where s[1] == 1 || s[1] == 3: dims = (s[0], s[1], s[2], s[3], false)
        default:
            throw fail("has shape \(s); images are (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3")
        }
        let (n, c, h, w, nhwc) = dims
        guard n > 0, h > 0, w > 0 else { throw fail("has shape \(s), which holds no images") }
        let kind = String(a.descr.dropFirst())
        var values = [UInt8](repeating: 0, count: a.count)  // in the array's own layout
        switch kind {
        case "u1":
            values = a.data
        case "f4":
            let big = a.descr.first == ">"
            var floats = [Float](repeating: 0, count: a.count)
            a.data.withUnsafeBytes { raw in
                for k in 0..<a.count {
                    let bits = raw.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self)
                    floats[k] = Float(bitPattern: big ? bits.byteSwapped : bits)
                }
            }
            if let bad = floats.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
                throw fail("value \(floats[bad]) at flat index \(bad); float images must be finite and in [0, 1] or [0, 255]")
            }
            let top = floats.max() ?? 0
            let scale: Float = top <= 1 ? 255 : 1
            if top > 255 { throw fail("largest value \(top) is above 255; float images must be in [0, 1] or [0, 255]") }
            for k in 0..<a.count { values[k] = UInt8((floats[k] * scale).rounded()) }
        default:
            throw fail("dtype '\(a.descr)' is not read for images; convert with .astype(np.uint8) or .astype(np.float32)")
        }
        if !nhwc || c == 1 { return (values, n, c, h, w) }
        var out = [UInt8](repeating: 0, count: a.count)  // (N, C, H, W)
        for i in 0..<n { for y in 0..<h { for x in 0..<w { for ch in 0..<c {
            out[((i * c + ch) * h + y) * w + x] = values[((i * h + y) * w + x) * c + ch]
        } } } }
        return (out, n, c, h, w)
    }

    /// The split `split` of the .npz at `path` (rules at the top of this file).
    public static func dataset(path: String, split: Dataset.Split, accountant: MemoryAccountant) throws -> Dataset {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue else {
            throw EspalierError.data(file: path, problem: isDir.boolValue ? "is a folder; --dataset npz takes --data-dir FILE.npz" : "no such file; --dataset npz takes --data-dir FILE.npz")
        }
        guard let contents = FileManager.default.contents(atPath: path) else {
            throw EspalierError.data(file: path, problem: "cannot be read; check its permissions")
        }
        return try dataset(bytes: [UInt8](contents), file: path, split: split, accountant: accountant)
    }

    /// The split `split` of the .npz held in `bytes` (errors name `file`); the fuzz tests feed it bytes.
    public static func dataset(bytes: [UInt8], file path: String, split: Dataset.Split, accountant: MemoryAccountant) throws -> Dataset {
        let zip = try members(bytes, file: path)
        func array(_ name: String) throws -> NPYArray {
            guard let bytes = zip[name + ".npy"] ?? zip[name] else {
                throw EspalierError.data(file: path, problem: "has no member \(name) (it holds \(zip.keys.sorted().joined(separator: ", "))); \(saveHint)")
            }
            return try parseNPY(bytes, member: name, file: path)
        }
        let (xName, yName) = split == .train ? ("x_train", "y_train") : ("x_test", "y_test")
        let trainLabels = try labels(try array("y_train"), member: "y_train", file: path)
        let xArray = try array(xName)
        // The converted images are counted while they are built (the dataset counts them from then on).
        let x = try withExtendedLifetime(try MemoryTicket(bytes: xArray.count, category: .data, accountant: accountant)) {
            try images(xArray, member: xName, file: path)
        }
        let y = split == .train ? trainLabels : try labels(try array(yName), member: yName, file: path)
        guard y.count == x.count else {
            throw EspalierError.data(file: path, problem: "\(xName) holds \(x.count) images but \(yName) \(y.count) labels; save the matching arrays (one label per image)")
        }
        guard let top = trainLabels.max() else { throw EspalierError.data(file: path, problem: "y_train is empty; \(saveHint)") }
        guard top < 1 << 20 else {
            throw EspalierError.data(file: path, problem: "the largest label in y_train is \(top), which would make \(top + 1) classes; renumber the classes 0, 1, 2, …")
        }
        for (name, ls) in [("y_train", trainLabels), (yName, y)] {
            if let bad = ls.firstIndex(where: { $0 < 0 || $0 > top }) {
                throw EspalierError.data(file: path, problem: "\(name)[\(bad)] is \(ls[bad]); labels must be in 0…\(top) "
                                         + "(0 to the largest training label), so renumber the classes from 0")
            }
        }
        let (mean, std) = Dataset.channelStatistics(x.pixels, channels: x.channels, pixelsPerChannel: x.height * x.width)
        return try Dataset(name: "npz \((path as NSString).lastPathComponent) \(split.rawValue)", images: x.pixels, labels: y.map { Int32($0) },
                           channels: x.channels, height: x.height, width: x.width, numClasses: top + 1,
                           mean: mean, std: std, accountant: accountant)
    }
}
