// IDX files (the MNIST / Fashion-MNIST format): uint8 images (magic 0x00000803, dims N×rows×cols)
// and uint8 labels (magic 0x00000801, dim N), read through zlib so `.gz` and plain files both work.
// Every header is checked, and the file must hold exactly the bytes it declares (no fewer, no more).
// Not here: other IDX element types (int16/int32/float/double), writing IDX files, datasets.

import CZlib
import Foundation

/// The pixels of an IDX image file.
public struct IDXImages: Sendable {
    public let count: Int
    public let rows: Int
    public let cols: Int
    /// pixels: (count, rows, cols), row-major uint8
    public let pixels: [UInt8]
}

public enum IDX {
    public static let imagesMagic: UInt32 = 0x0000_0803
    public static let labelsMagic: UInt32 = 0x0000_0801

    /// Reads an IDX3 uint8 image file (`train-images-idx3-ubyte[.gz]`).
    public static func readImages(path: String) throws -> IDXImages {
        let (dims, bytes) = try readUByte(path: path, expectedMagic: imagesMagic, what: "images")
        return IDXImages(count: dims[0], rows: dims[1], cols: dims[2], pixels: bytes)
    }

    /// Reads an IDX1 uint8 label file (`train-labels-idx1-ubyte[.gz]`).
    public static func readLabels(path: String) throws -> [UInt8] {
        try readUByte(path: path, expectedMagic: labelsMagic, what: "labels").bytes
    }

    /// Reads a uint8 IDX file whose magic must be `expectedMagic`; returns its dimensions and payload.
    static func readUByte(path: String, expectedMagic: UInt32, what: String) throws -> (dims: [Int], bytes: [UInt8]) {
        let reader = try ZReader(path: path)
        let head = try reader.read(count: 4)
        guard head.count == 4 else {
            throw EspalierError.data(file: path, problem: "file is \(head.count) bytes long, too short for an IDX header; "
                                     + "the download is truncated, fetch it again")
        }
        let magic = bigEndian(head, 0)
        guard magic == expectedMagic else {
            var hint = "not an IDX \(what) file"
            if magic == imagesMagic { hint = "this is an IDX images file, not \(what): were the images and labels paths swapped?" }
            if magic == labelsMagic { hint = "this is an IDX labels file, not \(what): were the images and labels paths swapped?" }
            if magic >> 16 == 0x1F8B { hint = "the data is gzip-compressed twice: gunzip it once" }
            throw EspalierError.data(file: path, problem: String(format: "magic number 0x%08X, expected 0x%08X (%@); %@",
                                                                 magic, expectedMagic, what, hint))
        }
        let ndims = Int(expectedMagic & 0xFF)
        let dimBytes = try reader.read(count: 4 * ndims)
        guard dimBytes.count == 4 * ndims else {
            throw EspalierError.data(file: path, problem: "header declares \(ndims) dimensions but the file ends inside them; "
                                     + "the file is truncated, fetch it again")
        }
        var dims: [Int] = []
        var total = 1
        for d in 0..<ndims {
            let v = Int(bigEndian(dimBytes, 4 * d))
            if d > 0, v == 0 {
                throw EspalierError.data(file: path, problem: "dimension \(d) is 0 in the header (dims \(dims + [v])); the file is corrupt")
            }
            let (p, overflow) = total.multipliedReportingOverflow(by: v)
            guard !overflow, p <= 1 << 40 else {
                throw EspalierError.data(file: path, problem: "header declares dims \(dims + [v]), an impossible size; the file is corrupt")
            }
            dims.append(v)
            total = p
        }
        let headerBytes = 4 + 4 * ndims
        let payload = try reader.read(count: total)
        guard payload.count == total else {
            throw EspalierError.data(file: path, problem: "truncated: the header declares dims \(dims), so \(headerBytes + total) bytes "
                                     + "(after decompression) were expected, but the file holds \(headerBytes + payload.count); "
                                     + "fetch or reinstall it")
        }
        let extra = try reader.countRemaining()
        guard extra == 0 else {
            throw EspalierError.data(file: path, problem: "\(extra) trailing bytes after the \(headerBytes + total) bytes that the header "
                                     + "(dims \(dims)) declares; the file is corrupt or not what its name says")
        }
        return (dims, payload)
    }

    private static func bigEndian(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3])
    }
}

/// A zlib reader over a gzip or plain file (gzread passes plain files through unchanged).
final class ZReader {
    let path: String
    private let file: gzFile

    init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw EspalierError.data(file: path, problem: "no such file")
        }
        guard !isDir.boolValue else { throw EspalierError.data(file: path, problem: "is a folder, expected a file") }
        guard let f = gzopen(path, "rb") else {
            throw EspalierError.data(file: path, problem: "cannot open: \(String(cString: strerror(errno))); check its permissions")
        }
        self.path = path
        file = f
        gzbuffer(file, 1 << 17)
    }

    deinit { gzclose(file) }

    /// Reads up to `count` bytes; fewer only at the end of the data.
    func read(count: Int) throws -> [UInt8] {
        var out = [UInt8]()
        // Grow with the data actually read, so a corrupt header cannot make us allocate its claim.
        out.reserveCapacity(min(count, 1 << 26))
        var chunk = [UInt8](repeating: 0, count: max(1, min(count, 1 << 22)))
        while out.count < count {
            let want = min(chunk.count, count - out.count)
            let got = try readSome(&chunk, want)
            if got == 0 { break }
            out.append(contentsOf: chunk[0..<got])
        }
        return out
    }

    /// Reads to the end and returns how many bytes were left.
    func countRemaining() throws -> Int {
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var total = 0
        while true {
            let got = try readSome(&chunk, chunk.count)
            if got == 0 { break }
            total += got
        }
        // zlib reports a gzip stream cut short (even inside its trailer) only as a sticky error.
        let (code, msg) = zlibError()
        if code != Z_OK {
            throw EspalierError.data(file: path, problem: "the gzip stream is damaged or cut short (zlib: \(msg)); fetch the file again")
        }
        return total
    }

    private func readSome(_ buffer: inout [UInt8], _ want: Int) throws -> Int {
        let got = buffer.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32(want)) }
        if got < 0 {
            let msg = zlibError().message
            throw EspalierError.data(file: path, problem: "cannot decompress (zlib: \(msg)); the .gz file is damaged or truncated, fetch it again")
        }
        return Int(got)
    }

    /// zlib's sticky error, without the path that zlib puts in front of its message.
    private func zlibError() -> (code: Int32, message: String) {
        var code: Int32 = 0
        var msg = gzerror(file, &code).map { String(cString: $0) } ?? "unknown error"
        if msg.hasPrefix(path + ": ") { msg.removeFirst(path.count + 2) }
        return (code, msg)
    }
}
