// Image folders in torchvision's ImageFolder layout (`--dataset folder --data-dir DIR`):
// DIR/train/<class>/*.png|jpg|jpeg and DIR/test/<class>/…, or, when DIR has neither, DIR/<class>/…
// split per class into train and test by `testFraction` with a fixed seed. PNG is decoded by
// libpng (its simplified API), JPEG by libjpeg-turbo (TurboJPEG); the format is read from the
// file's first bytes, not its name. Rules, fixed by the training split so that train and test
// always agree:
//   - classes: the sorted sub-folder names of the training tree (hidden ones ignored); labels 0…K−1 in that order;
//   - channels: 3 (RGB) if any training image is in colour, else 1 (grayscale); every image is
//     converted to it (colour to gray by libpng/libjpeg's luminance; alpha composited onto black);
//   - size: `imageSize`×`imageSize` if given, else the first training image's height×width (the
//     first file of the first class, by name); others are resized with bilinear interpolation
//     (half-pixel centres, no antialiasing: torch's `interpolate(mode="bilinear", align_corners=False)`).
// Every image is decoded once, straight into the dataset's uint8 buffer (N, C, H, W), which the
// memory accountant counts while it is filled. Mean and std are measured on the split read.
// Not here: other formats (GIF, BMP, WebP, 16-bit output), augmentation, class-name files.

import CPNG
import CTurboJPEG
import Foundation

/// An image decoded to 8-bit gray or RGB, interleaved: pixels (height, width, channels).
public struct DecodedImage: Sendable {
    public let width: Int
    public let height: Int
    public let channels: Int
    public let pixels: [UInt8]
}

/// PNG and JPEG decoding (whole files held in memory).
public enum ImageDecoder {
    public enum Format: String, Sendable { case png = "PNG", jpeg = "JPEG" }

    /// The format from the first bytes (PNG's 8-byte signature, JPEG's SOI marker FF D8 FF), or nil.
    public static func format(of bytes: [UInt8]) -> Format? {
        if bytes.count >= 8 && bytes[0..<8].elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if bytes.count >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF { return .jpeg }
        return nil
    }

    /// Width, height and channel count (1: grayscale, 3: colour) from the header alone. The reason
    /// comes back as the error (the caller names the file).
    public static func probe(_ bytes: [UInt8]) throws -> (width: Int, height: Int, channels: Int) {
        let header = try read(bytes, as: nil)
        return (header.width, header.height, header.channels)
    }

    /// Decodes `bytes` to `channels` (1: gray, 3: RGB), converting colour as needed.
    public static func decode(_ bytes: [UInt8], channels: Int) throws -> DecodedImage {
        precondition(channels == 1 || channels == 3)
        return try read(bytes, as: channels)
    }

    /// The header (`channels` nil: the file's own channel count, no pixels) or the pixels as `channels`.
    private static func read(_ bytes: [UInt8], as channels: Int?) throws -> DecodedImage {
        switch format(of: bytes) {
        case .png:
            var image = png_image()
            image.version = UInt32(PNG_IMAGE_VERSION)
            defer { png_image_free(&image) }
            let ok = bytes.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
            guard ok != 0 else { throw DecodeError(pngMessage(&image)) }
            let (w, h) = (Int(image.width), Int(image.height))
            guard w > 0, h > 0, w <= 1 << 15, h <= 1 << 15 else { throw DecodeError("has an impossible size \(w)×\(h)") }
            guard let channels else {
                return DecodedImage(width: w, height: h, channels: image.format & UInt32(PNG_FORMAT_FLAG_COLOR) != 0 ? 3 : 1, pixels: [])
            }
            image.format = channels == 3 ? UInt32(PNG_FORMAT_RGB) : UInt32(PNG_FORMAT_GRAY)
            // Zeros: an image with alpha is composited onto this buffer, i.e. onto black.
            var pixels = [UInt8](repeating: 0, count: w * h * channels)  // (h, w, channels)
            let done = pixels.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
            guard done != 0 else { throw DecodeError(pngMessage(&image)) }
            return DecodedImage(width: w, height: h, channels: channels, pixels: pixels)
        case .jpeg:
            guard let handle = tjInitDecompress() else { throw DecodeError("libjpeg-turbo could not start a decoder") }
            defer { tjDestroy(handle) }
            var w: Int32 = 0, h: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
            let rc = bytes.withUnsafeBufferPointer { tjDecompressHeader3(handle, $0.baseAddress, UInt($0.count), &w, &h, &subsampling, &colorspace) }
            guard rc == 0 else { throw DecodeError("libjpeg-turbo: " + String(cString: tjGetErrorStr2(handle))) }
            guard w > 0, h > 0, w <= 1 << 15, h <= 1 << 15 else { throw DecodeError("has an impossible size \(w)×\(h)") }
            guard let channels else {
                return DecodedImage(width: Int(w), height: Int(h), channels: colorspace == Int32(TJCS_GRAY.rawValue) ? 1 : 3, pixels: [])
            }
            var pixels = [UInt8](repeating: 0, count: Int(w) * Int(h) * channels)  // (h, w, channels)
            // A warning (a truncated or damaged stream that libjpeg would fill with gray) fails too.
            let flags = Int32(TJFLAG_STOPONWARNING)
            let done = bytes.withUnsafeBufferPointer { src in
                pixels.withUnsafeMutableBufferPointer { dst in
                    tjDecompress2(handle, src.baseAddress, UInt(src.count), dst.baseAddress, w, 0, h,
                                  Int32(channels == 3 ? TJPF_RGB.rawValue : TJPF_GRAY.rawValue), flags)
                }
            }
            guard done == 0 else { throw DecodeError("libjpeg-turbo: " + String(cString: tjGetErrorStr2(handle))) }
            return DecodedImage(width: Int(w), height: Int(h), channels: channels, pixels: pixels)
        case nil:
            throw DecodeError("neither a PNG nor a JPEG (its first bytes are not a PNG signature or a JPEG start marker)")
        }
    }

    /// Writes `image` resized to `height`×`width` into `dst` channel-major (channels, height, width):
    /// bilinear with half-pixel centres (no antialiasing), rounded to the nearest integer; a copy when
    /// the sizes agree.
    public static func resizeBilinear(_ image: DecodedImage, height: Int, width: Int, into dst: UnsafeMutablePointer<UInt8>) {
        let (c, h, w) = (image.channels, image.height, image.width)
        image.pixels.withUnsafeBufferPointer { src in
            if h == height && w == width {
                for ch in 0..<c { for y in 0..<h { for x in 0..<w { dst[(ch * h + y) * w + x] = src[(y * w + x) * c + ch] } } }
                return
            }
            // Source coordinate of a destination pixel: (d + 0.5)·scale − 0.5, clamped to the image.
            func taps(_ d: Int, _ n: Int, _ scale: Double) -> (Int, Int, Double) {
                let s = max(0, (Double(d) + 0.5) * scale - 0.5)
                let i0 = min(Int(s), n - 1)
                return (i0, min(i0 + 1, n - 1), s - Double(i0))
            }
            let sy = Double(h) / Double(height), sx = Double(w) / Double(width)
            for y in 0..<height {
                let (y0, y1, fy) = taps(y, h, sy)
                for x in 0..<width {
                    let (x0, x1, fx) = taps(x, w, sx)
                    for ch in 0..<c {
                        let a = Double(src[(y0 * w + x0) * c + ch]), b = Double(src[(y0 * w + x1) * c + ch])
                        let p = Double(src[(y1 * w + x0) * c + ch]), q = Double(src[(y1 * w + x1) * c + ch])
                        let v = (a * (1 - fx) + b * fx) * (1 - fy) + (p * (1 - fx) + q * fx) * fy
                        dst[(ch * height + y) * width + x] = UInt8(max(0, min(255, v.rounded())))
                    }
                }
            }
        }
    }

    private static func pngMessage(_ image: inout png_image) -> String {
        let text = withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return "libpng: " + (text.isEmpty ? "unknown error" : text)
    }

    /// Why a file could not be decoded (without the file's name).
    public struct DecodeError: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }
}

extension Dataset {
    /// The extensions an image folder's files may have (any case); other files are ignored.
    public static let imageFolderExtensions: Set<String> = ["png", "jpg", "jpeg"]
    /// The seed of the per-class train/test split of a folder without train/ and test/: fixed, so
    /// that every run (and `espalier eval`) draws the same test images, whatever its --seed.
    public static let imageFolderSplitSeed: UInt64 = 0x1A6E_F01D_E5_5EED

    /// A dataset from the image folder `root` (the layout and rules are at the top of this file).
    /// - Parameters:
    ///   - testFraction: the share of each class held out as test when `root` has no train/ and test/
    ///     (round(fraction·n) images of a class of n, drawn with `imageFolderSplitSeed`).
    ///   - imageSize: the side every image is resized to; nil = the first training image's size.
    ///   - skipBadImages: a file that cannot be decoded is skipped (counted in `skipped`) instead of an error.
    public static func imageFolder(root: String, split: Split, testFraction: Double = 0.2, imageSize: Int? = nil,
                                   skipBadImages: Bool = false, accountant: MemoryAccountant) throws -> (dataset: Dataset, skipped: [String]) {
        let fm = FileManager.default
        func isDirectory(_ p: String) -> Bool {
            var d: ObjCBool = false
            return fm.fileExists(atPath: p, isDirectory: &d) && d.boolValue
        }
        let layout = "an image folder holds train/<class>/*.png|jpg|jpeg and test/<class>/…, or <class>/… split by --test-fraction"
        guard isDirectory(root) else { throw EspalierError.data(file: root, problem: "image folder not found; \(layout)") }
        if let size = imageSize, size < 1 || size > 4096 {
            throw EspalierError.invalidArgument("--image-size \(size) must be between 1 and 4096 pixels")
        }
        guard testFraction >= 0, testFraction < 1 else {
            throw EspalierError.invalidArgument("--test-fraction \(testFraction) must be at least 0 and below 1 (the share of each class held out as test)")
        }
        let trainDir = (root as NSString).appendingPathComponent("train"), testDir = (root as NSString).appendingPathComponent("test")
        let hasTrain = isDirectory(trainDir), hasTest = isDirectory(testDir)
        if hasTrain != hasTest {
            let missing = hasTrain ? testDir : trainDir
            throw EspalierError.data(file: missing, problem: "not found, but \(hasTrain ? trainDir : testDir) is there; "
                                     + "add it (with the same class folders), or put the class folders directly in \(root) to split them by --test-fraction")
        }

        /// Class folder name → its image files (sorted paths).
        func scan(_ tree: String) throws -> [(name: String, files: [String])] {
            let names = try fm.contentsOfDirectory(atPath: tree).filter { !$0.hasPrefix(".") && isDirectory((tree as NSString).appendingPathComponent($0)) }.sorted()
            guard !names.isEmpty else {
                throw EspalierError.data(file: tree, problem: "holds no class folders; \(layout)")
            }
            return try names.map { name -> (name: String, files: [String]) in
                let folder = (tree as NSString).appendingPathComponent(name)
                let files = try fm.contentsOfDirectory(atPath: folder)
                    .filter { !$0.hasPrefix(".") && imageFolderExtensions.contains(($0 as NSString).pathExtension.lowercased()) }
                    .sorted().map { (folder as NSString).appendingPathComponent($0) }
                guard !files.isEmpty else {
                    throw EspalierError.data(file: folder, problem: "class folder holds no .png, .jpg or .jpeg files; add images or remove the folder")
                }
                return (name, files)
            }
        }

        // The training tree's classes and files, and those of the split asked for (labelled by class index).
        let classes: [String]
        var trainFiles: [(String, Int32)] = [], splitFiles: [(String, Int32)] = []   // (path, label)
        if hasTrain {
            let train = try scan(trainDir)
            classes = train.map(\.name)
            trainFiles = train.enumerated().flatMap { k, c in c.files.map { ($0, Int32(k)) } }
            if split == .train {
                splitFiles = trainFiles
            } else {
                let test = try scan(testDir)
                for c in test where !classes.contains(c.name) {
                    throw EspalierError.data(file: (testDir as NSString).appendingPathComponent(c.name),
                                             problem: "class folder is not in \(trainDir) (whose classes are \(classes.joined(separator: ", "))); "
                                                 + "rename it to a training class or add it to \(trainDir)")
                }
                splitFiles = test.flatMap { c in c.files.map { ($0, Int32(classes.firstIndex(of: c.name)!)) } }
            }
        } else {
            let all = try scan(root)
            classes = all.map(\.name)
            var rng = RNG(seed: imageFolderSplitSeed)
            var testSet: [(String, Int32)] = []
            for (k, c) in all.enumerated() {
                let perm = rng.permutation(c.files.count)
                let nTest = Int((Double(c.files.count) * testFraction).rounded())
                let held = Set(perm.prefix(nTest))
                for (i, f) in c.files.enumerated() {
                    if held.contains(i) { testSet.append((f, Int32(k))) } else { trainFiles.append((f, Int32(k))) }
                }
            }
            guard !trainFiles.isEmpty else {
                throw EspalierError.data(file: root, problem: "--test-fraction \(testFraction) leaves no training images; lower it")
            }
            splitFiles = split == .train ? trainFiles : testSet
            guard !splitFiles.isEmpty else {
                throw EspalierError.data(file: root, problem: "--test-fraction \(testFraction) leaves no test images; raise it (e.g. 0.2)")
            }
        }

        func read(_ path: String) throws -> [UInt8] {
            guard let d = fm.contents(atPath: path) else {
                throw EspalierError.data(file: path, problem: "cannot be read; check its permissions")
            }
            return [UInt8](d)
        }
        var skipped: [String] = []
        func bad(_ path: String, _ why: Any) throws {
            guard skipBadImages else {
                throw EspalierError.data(file: path, problem: "cannot be decoded (\(why)); replace or delete the file, or pass --skip-bad-images to skip such files")
            }
            skipped.append("\(path): \(why)")
        }

        // The channel rule and the first image's size, from the training split's headers.
        var channels = 1
        var size: (h: Int, w: Int)? = imageSize.map { ($0, $0) }
        var unreadable = Set<String>()
        for (path, _) in trainFiles {
            do {
                let p = try ImageDecoder.probe(try read(path))
                if size == nil { size = (p.height, p.width) }
                if p.channels == 3 { channels = 3 }
            } catch let e as ImageDecoder.DecodeError {
                try bad(path, e)
                unreadable.insert(path)
            }
        }
        guard let found = size else {
            throw EspalierError.data(file: hasTrain ? trainDir : root, problem: "no training image could be decoded (\(skipped.count) skipped); \(layout)")
        }
        let (height, width) = found

        // Decode straight into the dataset's buffer, counted while it fills.
        let plane = channels * height * width
        let (total, overflow) = splitFiles.count.multipliedReportingOverflow(by: plane)
        guard !overflow, total < 1 << 40 else {
            throw EspalierError.invalidArgument("\(splitFiles.count) images of \(channels)×\(height)×\(width) do not fit in memory; lower --image-size")
        }
        var images = [UInt8]()
        var labels = [Int32]()
        try withExtendedLifetime(try MemoryTicket(bytes: total, category: .data, accountant: accountant)) {
            images = [UInt8](repeating: 0, count: total)  // (N, C, H, W)
            labels.reserveCapacity(splitFiles.count)
            for (path, label) in splitFiles where !unreadable.contains(path) {   // those are already skipped
                let image: DecodedImage
                do { image = try ImageDecoder.decode(try read(path), channels: channels) } catch let e as ImageDecoder.DecodeError {
                    try bad(path, e)
                    continue
                }
                images.withUnsafeMutableBufferPointer {
                    ImageDecoder.resizeBilinear(image, height: height, width: width, into: $0.baseAddress! + labels.count * plane)
                }
                labels.append(label)
            }
            images.removeLast(total - labels.count * plane)
        }
        guard !labels.isEmpty else {
            throw EspalierError.data(file: hasTrain ? (split == .train ? trainDir : testDir) : root,
                                     problem: "no \(split.rawValue) image could be decoded (\(skipped.count) skipped)")
        }
        let (mean, std) = channelStatistics(images, channels: channels, pixelsPerChannel: height * width)
        let ds = try Dataset(name: "folder \((root as NSString).lastPathComponent) \(split.rawValue)", images: images, labels: labels,
                             channels: channels, height: height, width: width, numClasses: classes.count,
                             mean: mean, std: std, classNames: classes, accountant: accountant)
        return (ds, skipped)
    }
}
