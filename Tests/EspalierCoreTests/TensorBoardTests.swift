// The TensorBoard event writer on its own (no Python): CRC-32C against published test vectors,
// TFRecord framing read back and damage caught, the protobuf wire format byte for byte, the
// histogram's buckets, PNG headers, and an event file as the writer lays it out.

import EspalierCore
import EspalierTestSupport
import Foundation
import XCTest

final class TensorBoardTests: TemporaryDirectoryTestCase {
    func testCRC32C_MatchesTheStandardTestVectors() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of 0xFF, and ascending 0…31.
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        let c: UInt32 = 0xE306_9283
        XCTAssertEqual(CRC32C.masked(Array("123456789".utf8)), ((c >> 15) | (c << 17)) &+ 0xA282_EAD8)
    }

    func testTFRecordFrame_LayoutAndReadBack_DamageIsCaught() throws {
        let data = Array("hello".utf8)
        let framed = TFRecord.frame(data)
        XCTAssertEqual(framed.count, 8 + 4 + data.count + 4)
        XCTAssertEqual(Array(framed[0..<8]), [5, 0, 0, 0, 0, 0, 0, 0], "uint64 length, little-endian")
        let lengthCRC = CRC32C.masked(framed[0..<8])
        XCTAssertEqual(Array(framed[8..<12]), (0..<4).map { UInt8(truncatingIfNeeded: lengthCRC >> (8 * $0)) })
        XCTAssertEqual(Array(framed[12..<17]), data)
        let dataCRC = CRC32C.masked(data)
        XCTAssertEqual(Array(framed[17..<21]), (0..<4).map { UInt8(truncatingIfNeeded: dataCRC >> (8 * $0)) })
        let two = framed + TFRecord.frame([])
        XCTAssertEqual(TFRecord.records(two), [data, []])
        var damaged = two
        damaged[13] ^= 1
        XCTAssertNil(TFRecord.records(damaged), "a flipped data bit fails the data CRC")
        XCTAssertNil(TFRecord.records(Array(two.dropLast())), "a cut record is refused")
    }

    func testProtobufWriter_WireFormatByteForByte() {
        var p = ProtobufWriter()
        p.int(2, 300)
        XCTAssertEqual(p.bytes, [0x10, 0xAC, 0x02])
        p = ProtobufWriter()
        p.int(1, -1)
        XCTAssertEqual(p.bytes, [0x08] + [UInt8](repeating: 0xFF, count: 9) + [0x01], "negative int64: ten-byte varint")
        p = ProtobufWriter()
        p.double(1, 1.0)
        XCTAssertEqual(p.bytes, [0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F])
        p = ProtobufWriter()
        p.float(2, 1.5)
        XCTAssertEqual(p.bytes, [0x15, 0, 0, 0xC0, 0x3F])
        p = ProtobufWriter()
        p.string(3, "ab")
        XCTAssertEqual(p.bytes, [0x1A, 2, 0x61, 0x62])
        p = ProtobufWriter()
        p.packedDoubles(6, [1, 2])
        XCTAssertEqual(p.bytes, [0x32, 16, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F, 0, 0, 0, 0, 0, 0, 0, 0x40])
        var long = ProtobufWriter()
        long.bytes(4, [UInt8](repeating: 7, count: 200))
        XCTAssertEqual(Array(long.bytes[0..<3]), [0x22, 0xC8, 0x01], "a length over 127 takes two varint bytes")
    }

    func testEvents_FileVersionAndScalarSummary() {
        XCTAssertEqual(TensorBoardEvent.fileVersion(wallTime: 0), [0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x1A, 13] + Array("brain.Event:2".utf8))
        // Event{wall_time=0, step=4, session_log{status=START}}.
        XCTAssertEqual(TensorBoardEvent.sessionStart(step: 4, wallTime: 0), [0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 4, 0x3A, 2, 0x08, 1])
        // Event{wall_time=0, step=3, summary{value{tag="a", simple_value=1.5}}}.
        let value: [UInt8] = [0x0A, 1, 0x61, 0x15, 0, 0, 0xC0, 0x3F]
        let summary: [UInt8] = [0x0A, UInt8(value.count)] + value
        let expected: [UInt8] = [0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 3, 0x2A, UInt8(summary.count)] + summary
        XCTAssertEqual(TensorBoardEvent.summary(step: 3, wallTime: 0, values: [.scalar("a", 1.5)]), expected)
        // A histogram is Value.histo (field 5), an image Value.image (field 4) with height, width, colorspace, bytes.
        let h = TensorBoardEvent.summary(step: 1, wallTime: 0, values: [.histogram("h", TensorBoardHistogram([1]))])
        XCTAssertEqual(Array(h[15..<18]), [0x0A, 1, 0x68])
        XCTAssertEqual(h[18], 0x2A)
        let png = Self.pngHeaderBytes(width: 3, height: 2, colorType: 6)
        let i = TensorBoardEvent.summary(step: 1, wallTime: 0, values: [.image("i", png: png)])
        let image: [UInt8] = [0x08, 2, 0x10, 3, 0x18, 4, 0x22, UInt8(png.count)] + png
        XCTAssertEqual(Array(i.suffix(image.count + 2)), [0x22, UInt8(image.count)] + image)
        XCTAssertEqual(TensorBoardEvent.summary(step: 1, wallTime: 0, values: [.image("i", png: [1, 2, 3])]).count, 11 + 2,
                       "bytes that are not a PNG are left out (an empty summary)")
    }

    func testHistogram_BucketsCountEveryValueOnce() {
        let h = TensorBoardHistogram([0, 1, 2, 3, 3], bucketCount: 3)
        XCTAssertEqual(h.min, 0); XCTAssertEqual(h.max, 3); XCTAssertEqual(h.num, 5)
        XCTAssertEqual(h.sum, 9); XCTAssertEqual(h.sumSquares, 23)
        XCTAssertEqual(h.bucketLimits, [1, 2, 3])
        XCTAssertEqual(h.buckets, [2, 1, 2], "(min, 1], (1, 2], (2, 3]")
        let same = TensorBoardHistogram([0.5, 0.5, 0.5])
        XCTAssertEqual(same.bucketLimits, [0.5]); XCTAssertEqual(same.buckets, [3])
        let many = TensorBoardHistogram((0..<1000).map { sin(Double($0)) })
        XCTAssertEqual(many.buckets.count, 30)
        XCTAssertEqual(many.buckets.reduce(0, +), 1000)
        XCTAssertEqual(many.bucketLimits.last, many.max)
        XCTAssertEqual(TensorBoardHistogram([]).num, 0)
    }

    static func pngHeaderBytes(width: Int, height: Int, colorType: UInt8) -> [UInt8] {
        func be32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * (3 - $0))) } }
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + be32(13) + Array("IHDR".utf8) + be32(width) + be32(height)
            + [8, colorType, 0, 0, 0] + [0, 0, 0, 0]
    }

    func testPNGHeader_SizeAndColorspace() {
        let h = pngHeader(Self.pngHeaderBytes(width: 640, height: 70_000, colorType: 2))
        XCTAssertEqual(h?.width, 640); XCTAssertEqual(h?.height, 70_000); XCTAssertEqual(h?.colorspace, 3)
        XCTAssertEqual(pngHeader(Self.pngHeaderBytes(width: 1, height: 1, colorType: 6))?.colorspace, 4)
        XCTAssertEqual(pngHeader(Self.pngHeaderBytes(width: 1, height: 1, colorType: 0))?.colorspace, 1)
        XCTAssertNil(pngHeader(Array("GIF89a".utf8) + [UInt8](repeating: 0, count: 40)))
        XCTAssertNil(pngHeader(Array(Self.pngHeaderBytes(width: 1, height: 1, colorType: 2).prefix(20))))
    }

    func testWriter_FileNameAndRecords_ASecondWriterGetsItsOwnFile() throws {
        let tb = path("tb")
        let w = try TensorBoardWriter(directory: tb, wallTime: 1_700_000_000.5)
        try w.write(step: 1, values: [.scalar("loss", 2)], wallTime: 1_700_000_001)
        try w.write(step: 2, values: [.scalar("loss", 1)], wallTime: 1_700_000_002)
        let name = (w.path as NSString).lastPathComponent
        XCTAssertTrue(name.hasPrefix("events.out.tfevents.1700000000."), name)
        let records = try XCTUnwrap(TFRecord.records(Array(try Data(contentsOf: URL(fileURLWithPath: w.path)))))
        XCTAssertEqual(records, [TensorBoardEvent.fileVersion(wallTime: 1_700_000_000.5),
                                 TensorBoardEvent.summary(step: 1, wallTime: 1_700_000_001, values: [.scalar("loss", 2)]),
                                 TensorBoardEvent.summary(step: 2, wallTime: 1_700_000_002, values: [.scalar("loss", 1)])])
        let again = try TensorBoardWriter(directory: tb, restartAt: 2, wallTime: 1_700_000_000.9)
        XCTAssertEqual(again.path, w.path + ".1", "the same second: a new file, sorted after the first")
        XCTAssertEqual(TFRecord.records(Array(try Data(contentsOf: URL(fileURLWithPath: again.path)))),
                       [TensorBoardEvent.fileVersion(wallTime: 1_700_000_000.9), TensorBoardEvent.sessionStart(step: 2, wallTime: 1_700_000_000.9)])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tb).count, 2)
    }
}
