// Image folders (Dataset.imageFolder): the torchvision layout with train/ and test/ and without
// (split by a fraction with a fixed seed), the class, channel and size rules, bilinear resizing,
// PNG and JPEG decoding, corrupt files (an error naming the file, or skipped and counted) and
// empty class folders; also the per-channel statistics every new dataset measures.

import EspalierCore
import EspalierTestSupport
import Foundation
import XCTest

final class ImageFolderTests: TemporaryDirectoryTestCase {
    func write(_ bytes: [UInt8], _ name: String) throws {
        try FileManager.default.createDirectory(atPath: (path(name) as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: path(name)))
    }

    func testTrainTestLayout_SortedClasses_RGBIfAnyColour_FirstImageSize() throws {
        try DataFixtures.imageFolder(at: dir, classes: ["zebra", "ant"], perClass: 8)
        let acc = MemoryAccountant()
        let (train, skipped) = try Dataset.imageFolder(root: dir, split: .train, accountant: acc)
        XCTAssertTrue(skipped.isEmpty)
        XCTAssertEqual(train.classNames, ["ant", "zebra"], "class names sorted")
        XCTAssertEqual(train.count, 16)
        XCTAssertEqual([train.channels, train.height, train.width], [3, 12, 12], "RGB since some images are; the first image's 12×12")
        XCTAssertEqual(train.classCounts(), [8, 8])
        // The first image (ant/img000.png, gray, 12×12, exact) in all three channels, label 0 (ant, written as class 1).
        let expected = DataFixtures.pixels(class: 1, index: 0, width: 12, height: 12, channels: 1)
        XCTAssertEqual(train.labels[0], 0)
        for c in 0..<3 { XCTAssertEqual(Array(train.image(0)[(c * 144)..<((c + 1) * 144)]), expected) }
        // The counted bytes are the dataset's.
        XCTAssertEqual(acc.currentTotal, train.byteCount)
        let (test, _) = try Dataset.imageFolder(root: dir, split: .test, accountant: acc)
        XCTAssertEqual(test.count, 8)
        XCTAssertEqual(test.classNames, train.classNames)
        XCTAssertEqual([test.channels, test.height, test.width], [3, 12, 12])
    }

    func testJPEGAndResize_ColourImageDecodedAndResizedToTheFirstImageSize() throws {
        // A 16×16 RGB PNG of one colour resized to 12×12 keeps the colour exactly; a gray JPEG is close.
        try write(try DataFileWriters.png([UInt8](repeating: 90, count: 144), width: 12, height: 12, channels: 1), "train/a/0.png")
        try write(try DataFileWriters.png((0..<256).flatMap { _ in [10, 200, 50] as [UInt8] }, width: 16, height: 16, channels: 3), "train/a/1.png")
        try write(try DataFileWriters.jpeg([UInt8](repeating: 128, count: 100), width: 10, height: 10, channels: 1), "train/b/0.JPG")
        try write(try DataFileWriters.png([UInt8](repeating: 7, count: 144), width: 12, height: 12, channels: 1), "test/a/0.png")
        try write(try DataFileWriters.png([UInt8](repeating: 7, count: 144), width: 12, height: 12, channels: 1), "test/b/0.png")
        let (ds, _) = try Dataset.imageFolder(root: dir, split: .train, accountant: MemoryAccountant())
        XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width], [3, 3, 12, 12])
        let rgb = ds.image(1)
        for (c, v) in [10, 200, 50].enumerated() { XCTAssertTrue(rgb[(rgb.startIndex + c * 144)..<(rgb.startIndex + (c + 1) * 144)].allSatisfy { $0 == v }) }
        XCTAssertTrue(ds.image(2).allSatisfy { abs(Int($0) - 128) <= 2 }, "gray JPEG ≈ 128")
    }

    func testImageSize_BilinearWithHalfPixelCentres() throws {
        // A 2×2 image [0 255; 0 255] to 4×4: columns at source x = −0.25→0, 0.25, 0.75, 1.25→1: 0, 64, 191, 255 (torch's values).
        try write(try DataFileWriters.png([0, 255, 0, 255], width: 2, height: 2, channels: 1), "a/0.png")
        let (ds, _) = try Dataset.imageFolder(root: dir, split: .train, testFraction: 0, imageSize: 4, accountant: MemoryAccountant())
        XCTAssertEqual([ds.channels, ds.height, ds.width], [1, 4, 4])
        XCTAssertEqual(Array(ds.image(0)), Array(repeating: [0, 64, 191, 255] as [UInt8], count: 4).flatMap { $0 })
    }

    func testGrayOnlyFolder_OneChannel_AndTestSplitFollowsTheTrainingRules() throws {
        try DataFixtures.imageFolder(at: dir, perClass: 4, colour: false)
        let (train, _) = try Dataset.imageFolder(root: dir, split: .train, accountant: MemoryAccountant())
        XCTAssertEqual(train.channels, 1)
        // A colour test image is converted to the training data's single channel, and resized to its size.
        try write(try DataFileWriters.png([UInt8](repeating: 77, count: 20 * 20 * 3), width: 20, height: 20, channels: 3), "test/cat/zz.png")
        let (test, _) = try Dataset.imageFolder(root: dir, split: .test, accountant: MemoryAccountant())
        XCTAssertEqual([test.channels, test.height, test.width], [1, 12, 12])
        // cat (label 0) comes first; zz.png is its last file.
        let last = try XCTUnwrap(test.labels.lastIndex(of: 0))
        XCTAssertTrue(test.image(last).allSatisfy { abs(Int($0) - 77) <= 1 }, "\(Array(test.image(last)))")
    }

    func testNoTrainTest_SplitPerClassByFraction_FixedAndDisjoint() throws {
        try DataFixtures.imageFolder(at: dir, classes: ["a", "b", "c"], perClass: 10, splitFolders: false, colour: false)
        // Mark every image by its file: decode order is class, then name, so compare the pixel rows.
        let acc = MemoryAccountant()
        let train = try Dataset.imageFolder(root: dir, split: .train, testFraction: 0.3, accountant: acc).dataset
        let test = try Dataset.imageFolder(root: dir, split: .test, testFraction: 0.3, accountant: acc).dataset
        XCTAssertEqual(train.classCounts(), [7, 7, 7])
        XCTAssertEqual(test.classCounts(), [3, 3, 3])
        let again = try Dataset.imageFolder(root: dir, split: .test, testFraction: 0.3, accountant: acc).dataset
        XCTAssertEqual(again.images, test.images, "the same draw every time")
        // The images differ by index (i mod 5 in the texture): train ∪ test covers each class's 10 textures twice.
        let trainSet = (0..<train.count).map { Array(train.image($0)) + [UInt8(train.labels[$0])] }
        let testSet = (0..<test.count).map { Array(test.image($0)) + [UInt8(test.labels[$0])] }
        var counts: [[UInt8]: Int] = [:]
        for x in trainSet + testSet { counts[x, default: 0] += 1 }
        XCTAssertEqual(counts.values.reduce(0, +), 30)
        XCTAssertEqual(Set(counts.values), [2], "each (texture, class) pair is written twice in 10 images and appears twice overall")
    }

    func testCorruptImage_ErrorNamesTheFile_UnlessSkipped() throws {
        try DataFixtures.imageFolder(at: dir, perClass: 4)
        try write(Array("not an image at all".utf8), "train/cat/broken.png")
        XCTAssertThrowsError(try Dataset.imageFolder(root: dir, split: .train, accountant: MemoryAccountant())) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains(path("train/cat/broken.png")), text)
            XCTAssertTrue(text.contains("--skip-bad-images"), text)
        }
        let (ds, skipped) = try Dataset.imageFolder(root: dir, split: .train, skipBadImages: true, accountant: MemoryAccountant())
        XCTAssertEqual(ds.count, 8)
        XCTAssertEqual(skipped.count, 1)
        XCTAssertTrue(skipped[0].contains("broken.png"), skipped[0])
        // A JPEG cut short is corrupt too (libjpeg would fill it with gray and warn). (A bad training
        // file stops the test split as well: its headers fix the channel and size rules.)
        try FileManager.default.removeItem(atPath: path("train/cat/broken.png"))
        let jpeg = try DataFileWriters.jpeg([UInt8](repeating: 50, count: 16 * 16 * 3), width: 16, height: 16, channels: 3)
        try write(Array(jpeg.prefix(jpeg.count / 2)), "test/dog/cut.jpg")
        XCTAssertThrowsError(try Dataset.imageFolder(root: dir, split: .test, skipBadImages: false, accountant: MemoryAccountant())) { e in
            XCTAssertTrue("\(e)".contains("cut.jpg"), "\(e)")
        }
    }

    func testEmptyClassFolder_ErrorNamesTheFolder() throws {
        try DataFixtures.imageFolder(at: dir, perClass: 2)
        try FileManager.default.createDirectory(atPath: path("train/empty"), withIntermediateDirectories: true)
        try write(Array("notes".utf8), "train/empty/readme.txt")
        XCTAssertThrowsError(try Dataset.imageFolder(root: dir, split: .train, accountant: MemoryAccountant())) { e in
            XCTAssertTrue("\(e)".contains(path("train/empty")) && "\(e)".contains("no .png, .jpg or .jpeg"), "\(e)")
        }
    }

    func testLayoutErrors_MissingTestTree_UnknownTestClass_BadFraction() throws {
        try DataFixtures.imageFolder(at: dir, perClass: 2)
        try FileManager.default.createDirectory(atPath: path("test/horse"), withIntermediateDirectories: true)
        try write(try DataFileWriters.png([1, 2, 3, 4], width: 2, height: 2, channels: 1), "test/horse/0.png")
        XCTAssertThrowsError(try Dataset.imageFolder(root: dir, split: .test, accountant: MemoryAccountant())) { e in
            XCTAssertTrue("\(e)".contains("test/horse") && "\(e)".contains("not in"), "\(e)")
        }
        try FileManager.default.removeItem(atPath: path("test"))
        XCTAssertThrowsError(try Dataset.imageFolder(root: dir, split: .train, accountant: MemoryAccountant())) { e in
            XCTAssertTrue("\(e)".contains(path("test")) && "\(e)".contains("not found"), "\(e)")
        }
        XCTAssertThrowsError(try Dataset.imageFolder(root: path("nowhere"), split: .train, accountant: MemoryAccountant())) { e in
            XCTAssertTrue("\(e)".contains("image folder not found"), "\(e)")
        }
        XCTAssertThrowsError(try Dataset.imageFolder(root: path("train"), split: .train, testFraction: 1, accountant: MemoryAccountant())) { e in
            XCTAssertTrue("\(e)".contains("--test-fraction"), "\(e)")
        }
    }

    func testChannelStatistics_AndUseStatistics() throws {
        // Channel 0: 0 and 255 (mean 0.5, std 0.5); channel 1 constant 51 (mean 0.2, std raised to 1e-3).
        let (mean, std) = Dataset.channelStatistics([0, 51, 255, 51], channels: 2, pixelsPerChannel: 1)
        XCTAssertEqual(mean[0], 0.5, accuracy: 1e-6)
        XCTAssertEqual(std[0], 0.5, accuracy: 1e-6)
        XCTAssertEqual(mean[1], 0.2, accuracy: 1e-6)
        XCTAssertEqual(std[1], 1e-3, accuracy: 1e-9)
        let ds = try Dataset.synthetic(count: 4, channels: 1, accountant: MemoryAccountant())
        try ds.useStatistics(mean: [0.25], std: [2])
        XCTAssertEqual(ds.mean, [0.25])
        XCTAssertEqual(ds.std, [2])
        XCTAssertThrowsError(try ds.useStatistics(mean: [0.1, 0.2, 0.3], std: [1, 1, 1])) { e in
            XCTAssertTrue("\(e)".contains("1 channel"), "\(e)")
        }
    }
}
