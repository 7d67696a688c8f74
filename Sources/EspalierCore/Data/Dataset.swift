// Datasets held in memory as raw uint8 images (N, C, H, W) with int32 labels, counted in the
// memory accountant (category `.data`) for as long as the dataset lives. Loaders for
// Fashion-MNIST (IDX), CIFAR-10 and CIFAR-100 (binary versions) and a deterministic, learnable
// synthetic set; image folders are in ImageFolder.swift, NumPy .npz files in NPZ.swift.
// Not here: batching, shuffling, augmentation and normalisation (DataLoader.swift), downloads.

import Foundation

public final class Dataset: CustomStringConvertible {
    public enum Split: String, Codable, Sendable, CaseIterable { case train, test }

    public let name: String
    public let count: Int
    public let channels: Int
    public let height: Int
    public let width: Int
    public let numClasses: Int
    /// images: (count, channels, height, width), uint8, channel-major per image
    public let images: [UInt8]
    /// labels: (count), each in 0..<numClasses
    public let labels: [Int32]
    /// Per-channel mean and standard deviation of pixel/255, used to normalise batches. Every loader
    /// measures the split it holds (`channelStatistics`), none assumes published numbers; a test split
    /// is given its training split's numbers with `useStatistics` (what `espalier train` does, and
    /// `espalier eval` from the saved model).
    public private(set) var mean: [Float]
    public private(set) var std: [Float]
    public let classNames: [String]
    /// Keeps the raw bytes counted in the accountant while the dataset lives.
    public let ticket: MemoryTicket

    public var accountant: MemoryAccountant { ticket.accountant }
    /// Bytes of one image (C·H·W).
    public var imageSize: Int { channels * height * width }
    public var byteCount: Int { images.count + labels.count * MemoryLayout<Int32>.stride }

    /// Wraps raw bytes. `images` must hold `labels.count` images of (channels, height, width).
    public init(name: String, images: [UInt8], labels: [Int32], channels: Int, height: Int, width: Int,
                numClasses: Int, mean: [Float], std: [Float], classNames: [String]? = nil,
                accountant: MemoryAccountant) throws {
        guard channels > 0, height > 0, width > 0, numClasses > 0 else {
            throw EspalierError.invalidArgument("dataset \(name): channels, height, width and classes must be positive "
                                                + "(got \(channels), \(height), \(width), \(numClasses))")
        }
        guard images.count == labels.count * channels * height * width else {
            throw EspalierError.invalidArgument("dataset \(name): \(images.count) image bytes for \(labels.count) labels "
                                                + "of (\(channels), \(height), \(width)) = \(labels.count * channels * height * width) bytes")
        }
        guard mean.count == channels, std.count == channels, std.allSatisfy({ $0 > 0 }) else {
            throw EspalierError.invalidArgument("dataset \(name): needs \(channels) means and \(channels) positive stds, got \(mean) and \(std)")
        }
        if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= numClasses }) {
            throw EspalierError.invalidArgument("dataset \(name): label \(labels[bad]) of sample \(bad) is outside 0..<\(numClasses)")
        }
        if let classNames, classNames.count != numClasses {
            throw EspalierError.invalidArgument("dataset \(name): \(classNames.count) class names for \(numClasses) classes")
        }
        self.name = name
        self.count = labels.count
        self.channels = channels
        self.height = height
        self.width = width
        self.numClasses = numClasses
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std
        self.classNames = classNames ?? (0..<numClasses).map { "class \($0)" }
        self.ticket = try MemoryTicket(bytes: images.count + labels.count * MemoryLayout<Int32>.stride,
                                       category: .data, accountant: accountant)
    }

    /// Normalises with `mean` and `std` from now on (a test split with its training split's statistics).
    public func useStatistics(mean: [Float], std: [Float]) throws {
        guard mean.count == channels, std.count == channels, std.allSatisfy({ $0 > 0 && $0.isFinite }), mean.allSatisfy(\.isFinite) else {
            throw EspalierError.invalidArgument("dataset \(name) has \(channels) channel(s): it needs \(channels) finite means and \(channels) "
                                                + "positive stds, got \(mean) and \(std); were they measured on a dataset of another channel count?")
        }
        self.mean = mean
        self.std = std
    }

    /// Per-channel mean and standard deviation of pixel/255 over `images` (count, channels, pixelsPerChannel);
    /// a std below 1e-3 (a constant channel) is raised to 1e-3 so that normalising never divides by 0.
    public static func channelStatistics(_ images: [UInt8], channels: Int, pixelsPerChannel: Int) -> (mean: [Float], std: [Float]) {
        var histogram = [Int](repeating: 0, count: channels * 256)  // (channels, 256): exact sums from counts
        let plane = channels * pixelsPerChannel
        images.withUnsafeBufferPointer { px in
            histogram.withUnsafeMutableBufferPointer { h in
                for i in 0..<(plane == 0 ? 0 : px.count / plane) {
                    for c in 0..<channels {
                        let base = i * plane + c * pixelsPerChannel
                        for k in 0..<pixelsPerChannel { h[c * 256 + Int(px[base + k])] += 1 }
                    }
                }
            }
        }
        var mean = [Float](), std = [Float]()
        for c in 0..<channels {
            var n = 0.0, sum = 0.0, sumSq = 0.0
            for v in 0..<256 {
                let k = Double(histogram[c * 256 + v]), f = Double(v) / 255
                n += k; sum += k * f; sumSq += k * f * f
            }
            let m = sum / max(1, n)
            mean.append(Float(m))
            std.append(Float(max(1e-3, max(0, sumSq / max(1, n) - m * m).squareRoot())))
        }
        return (mean, std)
    }

    public var description: String {
        "\(name): \(count) images of (\(channels), \(height), \(width)), \(numClasses) classes, \(formatBytes(byteCount))"
    }

    /// The bytes of image `i`: (C, H, W).
    public func image(_ i: Int) -> ArraySlice<UInt8> { images[i * imageSize ..< (i + 1) * imageSize] }

    /// A new dataset holding copies of the given samples, in the given order (repeats allowed).
    public func subset(indices: [Int], name: String? = nil) throws -> Dataset {
        let size = imageSize
        var img = [UInt8](repeating: 0, count: indices.count * size)  // (indices.count, C, H, W)
        var lab = [Int32](repeating: 0, count: indices.count)
        for (k, i) in indices.enumerated() {
            guard i >= 0, i < count else {
                throw EspalierError.invalidArgument("subset of \(name ?? self.name): index \(i) is outside 0..<\(count)")
            }
            img.withUnsafeMutableBufferPointer { dst in
                images.withUnsafeBufferPointer { src in
                    dst.baseAddress!.advanced(by: k * size).update(from: src.baseAddress!.advanced(by: i * size), count: size)
                }
            }
            lab[k] = labels[i]
        }
        return try Dataset(name: name ?? "\(self.name)[subset \(indices.count)]", images: img, labels: lab,
                           channels: channels, height: height, width: width, numClasses: numClasses,
                           mean: mean, std: std, classNames: classNames, accountant: accountant)
    }

    /// The first `n` samples (all of them if `n >= count`).
    public func prefix(_ n: Int) throws -> Dataset {
        try subset(indices: Array(0..<max(0, min(n, count))), name: "\(name)[:\(max(0, min(n, count)))]")
    }

    /// How many samples of each class.
    public func classCounts() -> [Int] {
        var c = [Int](repeating: 0, count: numClasses)
        for l in labels { c[Int(l)] += 1 }
        return c
    }
}

// MARK: - Fashion-MNIST

extension Dataset {
    public static let fashionMNISTFolder = "/usr/share/datasets/fashion-mnist"
    public static let fashionMNISTClassNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    /// Fashion-MNIST from its four IDX files (`.gz` or uncompressed) in `folder`.
    public static func fashionMNIST(folder: String = fashionMNISTFolder, split: Split,
                                    accountant: MemoryAccountant) throws -> Dataset {
        let stem = split == .train ? "train" : "t10k"
        let install = "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), "
            + "which puts the files in \(fashionMNISTFolder), or pass --data-dir with a folder holding "
            + "\(stem)-images-idx3-ubyte.gz and \(stem)-labels-idx1-ubyte.gz"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw EspalierError.data(file: folder, problem: "Fashion-MNIST folder not found; \(install)")
        }
        func locate(_ base: String) throws -> String {
            for candidate in [base + ".gz", base] {
                let p = (folder as NSString).appendingPathComponent(candidate)
                if FileManager.default.fileExists(atPath: p) { return p }
            }
            throw EspalierError.data(file: (folder as NSString).appendingPathComponent(base + ".gz"),
                                     problem: "Fashion-MNIST file not found (nor without .gz); \(install)")
        }
        let imagesPath = try locate("\(stem)-images-idx3-ubyte")
        let labelsPath = try locate("\(stem)-labels-idx1-ubyte")
        let img = try IDX.readImages(path: imagesPath)
        let lab = try IDX.readLabels(path: labelsPath)
        guard img.rows == 28, img.cols == 28 else {
            throw EspalierError.data(file: imagesPath, problem: "images are \(img.rows)×\(img.cols), Fashion-MNIST images are 28×28")
        }
        guard img.count > 0 else {
            throw EspalierError.data(file: imagesPath, problem: "holds no images (its header counts 0); the file is empty or damaged: \(install)")
        }
        guard img.count == lab.count else {
            throw EspalierError.data(file: labelsPath, problem: "\(lab.count) labels but \(imagesPath) holds \(img.count) images; "
                                     + "the two files come from different sets, reinstall them")
        }
        if let bad = lab.firstIndex(where: { $0 >= 10 }) {
            throw EspalierError.data(file: labelsPath, problem: "label \(lab[bad]) at index \(bad); Fashion-MNIST labels are 0…9")
        }
        let (mean, std) = channelStatistics(img.pixels, channels: 1, pixelsPerChannel: 28 * 28)
        return try Dataset(name: "fashion-mnist \(split.rawValue)", images: img.pixels, labels: lab.map { Int32($0) },
                           channels: 1, height: 28, width: 28, numClasses: 10, mean: mean, std: std,
                           classNames: fashionMNISTClassNames, accountant: accountant)
    }
}

// MARK: - CIFAR-10 and CIFAR-100

/// The record layout of a CIFAR binary file: `labelBytes` label bytes (the label used is byte
/// `labelIndex`), then 3×32×32 pixels, channel-major (R plane, G plane, B plane).
public struct CIFARFormat: Sendable {
    public let name: String
    public let labelBytes: Int
    public let labelIndex: Int
    public let classes: Int
    public var recordBytes: Int { labelBytes + 3 * 32 * 32 }

    /// CIFAR-10: 1 label byte (0…9).
    public static let cifar10 = CIFARFormat(name: "CIFAR-10", labelBytes: 1, labelIndex: 0, classes: 10)
    /// CIFAR-100: a coarse label byte (0…19) then the fine label byte (0…99), which is the one used.
    public static let cifar100 = CIFARFormat(name: "CIFAR-100", labelBytes: 2, labelIndex: 1, classes: 100)
}

extension Dataset {
    public static let cifar10ClassNames = ["airplane", "automobile", "bird", "cat", "deer",
                                           "dog", "frog", "horse", "ship", "truck"]
    /// One record: 1 label byte, then 3×32×32 pixels, channel-major (R plane, G plane, B plane).
    public static let cifar10RecordBytes = CIFARFormat.cifar10.recordBytes
    /// The records of each file of the CIFAR-10 download; files of any record count are read.
    public static let cifar10RecordsPerFile = 10000

    /// Parses one CIFAR-10 binary batch held in memory; see `cifarBatch`.
    public static func cifar10Batch(_ bytes: [UInt8], trailingBytes: Int = 0, records: Int = cifar10RecordsPerFile,
                                    file: String, hint: String = "") throws -> (pixels: [UInt8], labels: [Int32]) {
        try cifarBatch(bytes, format: .cifar10, trailingBytes: trailingBytes, records: records, file: file, hint: hint)
    }

    /// Parses one CIFAR binary file held in memory: exactly `records` records of `format.recordBytes`,
    /// followed by `trailingBytes` more bytes that were not read (an error unless 0). Returns the
    /// pixels (records, 3, 32, 32) and the labels; errors name `file` and end with `hint`. The CIFAR
    /// loaders read each file through it (the fuzz tests in Tests/FuzzTesting feed it bytes).
    public static func cifarBatch(_ bytes: [UInt8], format: CIFARFormat, trailingBytes: Int = 0, records: Int,
                                  file: String, hint: String = "") throws -> (pixels: [UInt8], labels: [Int32]) {
        let rec = format.recordBytes, pix = 3 * 32 * 32
        guard records >= 0, records <= Int.max / rec else {
            throw EspalierError.invalidArgument("\(format.name) batch: \(records) records is not a possible count")
        }
        let (total, overflow) = bytes.count.addingReportingOverflow(max(0, trailingBytes))
        guard !overflow, total == records * rec, bytes.count == total else {
            var problem = "holds \(overflow ? "more than \(Int.max)" : "\(total)") bytes, expected \(records * rec) (\(records) records of \(rec) bytes: "
                + "\(format.labelBytes == 1 ? "1 label" : "\(format.labelBytes) labels") + 3×32×32 pixels)"
            if overflow || total % rec != 0 {
                problem += "; \(total) is not a multiple of \(rec), so this is not the \(format.name) binary version "
                    + "(the python and matlab versions do not work\(format.labelBytes == 1 ? ", nor CIFAR-100: use --dataset cifar100" : ", nor CIFAR-10: use --dataset cifar10")) or the file is truncated"
            } else {
                problem += "; it has \(total / rec) records, so it is truncated or not a \(format.name) batch"
            }
            throw EspalierError.data(file: file, problem: problem + (hint.isEmpty ? "" : ". \(hint)"))
        }
        var pixels = [UInt8](repeating: 0, count: records * pix)  // (records, 3, 32, 32)
        var labels = [Int32](repeating: 0, count: records)
        for r in 0..<records {
            let l = bytes[r * rec + format.labelIndex]
            guard Int(l) < format.classes else {
                throw EspalierError.data(file: file, problem: "record \(r) has label \(l); \(format.name) labels are 0…\(format.classes - 1), "
                                         + "so this is not a \(format.name) binary file")
            }
            labels[r] = Int32(l)
        }
        bytes.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                for r in 0..<records {
                    dst.baseAddress!.advanced(by: r * pix).update(from: src.baseAddress!.advanced(by: r * rec + format.labelBytes), count: pix)
                }
            }
        }
        return (pixels, labels)
    }

    /// CIFAR-10, binary version (`cifar-10-binary.tar.gz`): `data_batch_1.bin`…`data_batch_5.bin` for
    /// train, `test_batch.bin` for test, in `folder` or in `folder/cifar-10-batches-bin`. `.bin.gz` is
    /// read too, and files of any record count (a subset written in the same layout).
    public static func cifar10(folder: String, split: Split, accountant: MemoryAccountant) throws -> Dataset {
        let install = "download the binary version (cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
            + "extract it, and pass --data-dir with the folder holding data_batch_1.bin … test_batch.bin"
        let names = split == .train ? (1...5).map { "data_batch_\($0).bin" } : ["test_batch.bin"]
        let (images, labels) = try readCIFAR(format: .cifar10, folder: folder, names: names, nested: "cifar-10-batches-bin", install: install)
        let (mean, std) = channelStatistics(images, channels: 3, pixelsPerChannel: 32 * 32)
        return try Dataset(name: "cifar10 \(split.rawValue)", images: images, labels: labels, channels: 3, height: 32, width: 32,
                           numClasses: 10, mean: mean, std: std,
                           classNames: cifar10ClassNames, accountant: accountant)
    }

    /// CIFAR-100, binary version (`cifar-100-binary.tar.gz`): `train.bin` and `test.bin` (`.gz` too, any
    /// record count) in `folder` or `folder/cifar-100-binary`, with the 100 fine labels; class names
    /// from `fine_label_names.txt` beside them when it is there. Mean and std are measured on the split read.
    public static func cifar100(folder: String, split: Split, accountant: MemoryAccountant) throws -> Dataset {
        let install = "download the binary version (cifar-100-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
            + "extract it, and pass --data-dir with the folder holding train.bin and test.bin"
        let (images, labels) = try readCIFAR(format: .cifar100, folder: folder, names: [split == .train ? "train.bin" : "test.bin"],
                                             nested: "cifar-100-binary", install: install)
        var names: [String]? = nil
        for dir in [folder, (folder as NSString).appendingPathComponent("cifar-100-binary")] {
            let p = (dir as NSString).appendingPathComponent("fine_label_names.txt")
            guard let text = try? String(contentsOfFile: p, encoding: .utf8) else { continue }
            let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard lines.count == 100 else {
                throw EspalierError.data(file: p, problem: "holds \(lines.count) class names, CIFAR-100 has 100 (one per line); restore it from the archive or remove it")
            }
            names = lines
            break
        }
        let (mean, std) = channelStatistics(images, channels: 3, pixelsPerChannel: 32 * 32)
        return try Dataset(name: "cifar100 \(split.rawValue)", images: images, labels: labels, channels: 3, height: 32, width: 32,
                           numClasses: 100, mean: mean, std: std, classNames: names, accountant: accountant)
    }

    /// The records of the files `names` (each in `folder` or `folder/nested`, `.gz` allowed), in order:
    /// pixels (N, 3, 32, 32) and labels (N). Each file holds any positive number of whole records.
    static func readCIFAR(format: CIFARFormat, folder: String, names: [String], nested: String,
                          install: String) throws -> (images: [UInt8], labels: [Int32]) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw EspalierError.data(file: folder, problem: "\(format.name) folder not found; \(install)")
        }
        let nestedDir = (folder as NSString).appendingPathComponent(nested)
        func locate(_ name: String) throws -> String {
            for dir in [folder, nestedDir] {
                for candidate in [name, name + ".gz"] {
                    let p = (dir as NSString).appendingPathComponent(candidate)
                    if FileManager.default.fileExists(atPath: p) { return p }
                }
            }
            throw EspalierError.data(file: (folder as NSString).appendingPathComponent(name), problem: "\(format.name) file not found; \(install)")
        }
        var images = [UInt8](), labels = [Int32]()  // (N, 3, 32, 32), (N)
        for name in names {
            let path = try locate(name)
            let reader = try ZReader(path: path)
            let bytes = try reader.read(count: Int.max)
            _ = try reader.countRemaining()   // a damaged gzip stream is reported here
            guard !bytes.isEmpty else {
                throw EspalierError.data(file: path, problem: "is empty; a \(format.name) file holds records of \(format.recordBytes) bytes. \(install)")
            }
            let batch = try cifarBatch(bytes, format: format, records: bytes.count / format.recordBytes, file: path, hint: install)
            images += batch.pixels
            labels += batch.labels
        }
        return (images, labels)
    }
}

// MARK: - Synthetic

extension Dataset {
    /// A deterministic dataset that small networks learn quickly. Class k has a fixed random look,
    /// drawn from `seed`: a base brightness per channel and an oriented stripe texture (angle,
    /// frequency, amplitude). Each sample is that texture at a random phase (so crops and flips keep
    /// it recognisable) plus Gaussian noise (σ = 0.08 of the range). Labels cycle 0, 1, …, classes−1.
    /// The classes depend only on `seed`; `split` picks an independent stream of samples, so
    /// `.train` and `.test` with the same seed are two samples of one task. Mean/std are measured.
    public static func synthetic(count: Int, channels: Int = 1, height: Int = 8, width: Int = 8, classes: Int = 10,
                                 seed: UInt64 = 0, split: Split = .train, accountant: MemoryAccountant) throws -> Dataset {
        guard count >= 0, channels > 0, height > 0, width > 0, classes > 0 else {
            throw EspalierError.invalidArgument("synthetic dataset: count must be ≥ 0 and channels, height, width, classes > 0 "
                                                + "(got \(count), \(channels), \(height), \(width), \(classes))")
        }
        struct Look { var base: [Float]; var cosA: Float; var sinA: Float; var freq: Float; var amp: Float }
        var proto = RNG(seed: seed)
        var looks: [Look] = []
        for k in 0..<classes {
            let base = (0..<channels).map { _ in 0.3 + 0.4 * proto.uniform() }
            // Angles spread over [0, π) so neighbouring classes differ in orientation, jittered.
            let angle = Float.pi * (Float(k) + 0.5 * proto.uniform()) / Float(classes)
            looks.append(Look(base: base, cosA: cos(angle), sinA: sin(angle),
                              freq: 2 * Float.pi * (0.12 + 0.25 * proto.uniform()), amp: 0.15 + 0.15 * proto.uniform()))
        }
        var rng = RNG(seed: seed ^ (split == .train ? 0x5EED_7EA1_0000_0001 : 0x5EED_7E57_0000_0002))
        let size = channels * height * width
        var images = [UInt8](repeating: 0, count: count * size)  // (count, C, H, W)
        var labels = [Int32](repeating: 0, count: count)
        for i in 0..<count {
            let k = i % classes
            let look = looks[k]
            labels[i] = Int32(k)
            let phase = 2 * Float.pi * rng.uniform()
            for c in 0..<channels {
                // Channels share the texture, alternating its sign, so colour carries class information too.
                let sign: Float = c % 2 == 0 ? 1 : -1
                for y in 0..<height {
                    for x in 0..<width {
                        let t = look.freq * (Float(x) * look.cosA + Float(y) * look.sinA) + phase
                        let v = look.base[c] + sign * look.amp * sin(t) + 0.08 * rng.normal()
                        images[i * size + (c * height + y) * width + x] = UInt8(max(0, min(255, (v * 255).rounded())))
                    }
                }
            }
        }
        let (mean, std) = channelStatistics(images, channels: channels, pixelsPerChannel: height * width)
        return try Dataset(name: "synthetic \(split.rawValue) (seed \(seed))", images: images, labels: labels,
                           channels: channels, height: height, width: width, numClasses: classes,
                           mean: mean, std: std, accountant: accountant)
    }
}
