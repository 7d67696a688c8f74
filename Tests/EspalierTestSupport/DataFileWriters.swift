// Writers of the data files the dataset tests read: PNG (libpng's simplified API) and JPEG
// (TurboJPEG) images, NumPy .npy arrays and .npz zips (stored or raw-deflated members, through
// zlib), and CIFAR binary records. Test data only: no options beyond what the tests need.

import CPNG
import CTurboJPEG
import CZlib
import Foundation

public enum DataFileWriters {
    public struct WriteError: Error, CustomStringConvertible {
        public let description: String
    }

    /// A PNG of `pixels` (height, width, channels) interleaved, channels 1 (gray) or 3 (RGB).
    public static func png(_ pixels: [UInt8], width: Int, height: Int, channels: Int) throws -> [UInt8] {
        precondition(pixels.count == width * height * channels && (channels == 1 || channels == 3))
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = channels == 3 ? UInt32(PNG_FORMAT_RGB) : UInt32(PNG_FORMAT_GRAY)
        var size: png_alloc_size_t = 0
        guard pixels.withUnsafeBytes({ png_image_write_to_memory(&image, nil, &size, 0, $0.baseAddress, 0, nil) }) != 0 else {
            throw WriteError(description: "libpng could not size the PNG")
        }
        var out = [UInt8](repeating: 0, count: Int(size))
        let ok = out.withUnsafeMutableBytes { dst in
            pixels.withUnsafeBytes { png_image_write_to_memory(&image, dst.baseAddress, &size, 0, $0.baseAddress, 0, nil) }
        }
        guard ok != 0 else { throw WriteError(description: "libpng could not write the PNG") }
        return Array(out.prefix(Int(size)))
    }

    /// A JPEG (quality 95, no chroma subsampling) of `pixels` (height, width, channels), channels 1 or 3.
    public static func jpeg(_ pixels: [UInt8], width: Int, height: Int, channels: Int) throws -> [UInt8] {
        precondition(pixels.count == width * height * channels && (channels == 1 || channels == 3))
        guard let handle = tjInitCompress() else { throw WriteError(description: "libjpeg-turbo could not start an encoder") }
        defer { tjDestroy(handle) }
        var buffer: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        let rc = pixels.withUnsafeBufferPointer {
            tjCompress2(handle, $0.baseAddress, Int32(width), 0, Int32(height),
                        Int32(channels == 3 ? TJPF_RGB.rawValue : TJPF_GRAY.rawValue), &buffer, &size,
                        Int32(channels == 3 ? TJSAMP_444.rawValue : TJSAMP_GRAY.rawValue), 95, 0)
        }
        guard rc == 0, let buffer else { throw WriteError(description: "libjpeg-turbo: " + String(cString: tjGetErrorStr2(handle))) }
        defer { tjFree(buffer) }
        return Array(UnsafeBufferPointer(start: buffer, count: Int(size)))
    }

    /// A .npy (format 1.0) holding `data` as dtype `descr` with `shape`, C order.
    public static func npy(descr: String, shape: [Int], data: [UInt8], fortranOrder: Bool = false) -> [UInt8] {
        let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
        var header = "{'descr': '\(descr)', 'fortran_order': \(fortranOrder ? "True" : "False"), 'shape': (\(dims)), }"
        // numpy pads the header with spaces and a newline so that the data starts on a multiple of 64.
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        let n = header.utf8.count
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(n & 0xFF), UInt8(n >> 8)] + Array(header.utf8) + data
    }

    /// The little-endian bytes of `values`.
    public static func bytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        values.flatMap { v in (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: v.littleEndian >> (8 * $0)) } }
    }

    public static func bytes(_ values: [Float]) -> [UInt8] { bytes(values.map(\.bitPattern)) }

    /// A zip of `members` (name, bytes, deflated or stored), as np.savez writes one.
    public static func zip(_ members: [(name: String, data: [UInt8], deflate: Bool)]) throws -> [UInt8] {
        var out = [UInt8](), central = [UInt8]()
        func u16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
        func u32(_ v: Int) -> [UInt8] { u16(v & 0xFFFF) + u16((v >> 16) & 0xFFFF) }
        for m in members {
            let crc = m.data.withUnsafeBufferPointer { Int(crc32(0, $0.baseAddress, UInt32($0.count))) }
            let body = m.deflate ? try deflateRaw(m.data) : m.data
            let name = Array(m.name.utf8)
            let common = u16(20) + u16(0) + u16(m.deflate ? 8 : 0) + u16(0) + u16(0x21) + u32(crc) + u32(body.count) + u32(m.data.count) + u16(name.count) + u16(0)
            let offset = out.count
            out += u32(0x0403_4B50) + common + name + body
            central += u32(0x0201_4B50) + u16(20) + common + u16(0) + u16(0) + u16(0) + u32(0) + u32(offset) + name
        }
        let cdOffset = out.count
        out += central
        out += u32(0x0605_4B50) + u16(0) + u16(0) + u16(members.count) + u16(members.count) + u32(central.count) + u32(cdOffset) + u16(0)
        return out
    }

    /// Raw deflate, as zip members hold it: zlib's compress2 output (a zlib stream) without its
    /// 2-byte header and 4-byte Adler-32 trailer.
    public static func deflateRaw(_ data: [UInt8]) throws -> [UInt8] {
        var length = compressBound(UInt(data.count))
        var out = [UInt8](repeating: 0, count: Int(length))
        let rc = out.withUnsafeMutableBufferPointer { dst in
            data.withUnsafeBufferPointer { compress2(dst.baseAddress, &length, $0.baseAddress, UInt($0.count), 6) }
        }
        guard rc == Z_OK, length >= 6 else { throw WriteError(description: "compress2 returned \(rc)") }
        return Array(out[2..<(Int(length) - 4)])
    }

    /// CIFAR binary records: per image its label bytes (`labels[i]`, one or two), then `pixels(i)` (3×32×32).
    public static func cifar(labels: [[UInt8]], pixels: (Int) -> [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        for (i, l) in labels.enumerated() {
            let p = pixels(i)
            precondition(p.count == 3 * 32 * 32)
            out += l + p
        }
        return out
    }
}

/// Small data sets on disk in each format, learnable (class k is brighter than class k−1, with a
/// per-image texture), for the loader and command-line tests.
public enum DataFixtures {
    /// Image `i` of class `k`: (height, width, channels) interleaved.
    public static func pixels(class k: Int, index i: Int, width: Int, height: Int, channels: Int) -> [UInt8] {
        (0..<(width * height * channels)).map { p in
            let x = (p / channels) % width, y = p / channels / width, c = p % channels
            return UInt8((40 + 120 * k + 7 * ((x + 2 * y + i + c) % 5)) % 256)
        }
    }

    /// An image folder in `root`: `classes` (in the order given, not sorted), `perClass` images each
    /// under train/ (and `perClass / 2` under test/ when `splitFolders`, else all directly under
    /// root/<class>). Each class's first file is a 12×12 grayscale PNG; the others alternate
    /// RGB 16×16 PNG, grayscale 12×12 JPEG and RGB 16×16 JPEG (`colour: false`: gray PNGs only).
    public static func imageFolder(at root: String, classes: [String] = ["dog", "cat"], perClass: Int = 12,
                                   splitFolders: Bool = true, colour: Bool = true) throws {
        let trees: [(String, Int)] = splitFolders ? [("train", perClass), ("test", max(1, perClass / 2))] : [("", perClass)]
        for (tree, n) in trees {
            for (k, name) in classes.enumerated() {
                let folder = ((root as NSString).appendingPathComponent(tree) as NSString).appendingPathComponent(name)
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                for i in 0..<n {
                    let kind = colour ? i % 4 : 0
                    let (side, channels) = kind == 0 || kind == 2 ? (12, 1) : (16, 3)
                    let px = pixels(class: k, index: i, width: side, height: side, channels: channels)
                    let bytes = kind < 2 ? try DataFileWriters.png(px, width: side, height: side, channels: channels)
                                         : try DataFileWriters.jpeg(px, width: side, height: side, channels: channels)
                    let file = "img" + String(format: "%03d", i) + (kind < 2 ? ".png" : ".jpg")
                    try Data(bytes).write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent(file)))
                }
            }
        }
    }

    /// An .npz with uint8 NHWC images (n, 8, 8, 3) of `classes` classes and int64 labels; x_train and
    /// y_train stored, x_test and y_test deflated.
    public static func npz(train n: Int = 48, test m: Int = 16, classes: Int = 3) throws -> [UInt8] {
        func x(_ count: Int, _ offset: Int) -> [UInt8] {
            (0..<count).flatMap { i in pixels(class: (i + offset) % classes, index: i, width: 8, height: 8, channels: 3) }
        }
        func y(_ count: Int, _ offset: Int) -> [UInt8] { DataFileWriters.bytes((0..<count).map { Int64(($0 + offset) % classes) }) }
        return try DataFileWriters.zip([
            ("x_train.npy", DataFileWriters.npy(descr: "|u1", shape: [n, 8, 8, 3], data: x(n, 0)), false),
            ("y_train.npy", DataFileWriters.npy(descr: "<i8", shape: [n], data: y(n, 0)), false),
            ("x_test.npy", DataFileWriters.npy(descr: "|u1", shape: [m, 8, 8, 3], data: x(m, 1)), true),
            ("y_test.npy", DataFileWriters.npy(descr: "<i8", shape: [m], data: y(m, 1)), true),
        ])
    }

    /// CIFAR-10 binary files in `folder`: data_batch_1…5.bin with `perBatch` records each and
    /// test_batch.bin with `test` records (labels cycle 0…9).
    public static func cifar10(at folder: String, perBatch: Int = 60, test: Int = 300) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (name, n) in (1...5).map({ ("data_batch_\($0).bin", perBatch) }) + [("test_batch.bin", test)] {
            let bytes = DataFileWriters.cifar(labels: (0..<n).map { [UInt8($0 % 10)] }) { i in
                pixels(class: i % 10 % 2, index: i, width: 32, height: 32, channels: 3)
            }
            try Data(bytes).write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent(name)))
        }
    }

    /// CIFAR-100 binary train.bin (`train` records) and test.bin (`test` records) in `folder`: coarse
    /// label i % 20, fine label (7·i) % 100.
    public static func cifar100(at folder: String, train: Int = 120, test: Int = 40) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (name, n) in [("train.bin", train), ("test.bin", test)] {
            let bytes = DataFileWriters.cifar(labels: (0..<n).map { [UInt8($0 % 20), UInt8(7 * $0 % 100)] }) { i in
                pixels(class: 7 * i % 100 % 2, index: i, width: 32, height: 32, channels: 3)
            }
            try Data(bytes).write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent(name)))
        }
    }
}
