// What a training command ends with, for programs rather than people: OUT/result.json, written
// atomically by `espalier train` and `espalier train-pruned` after the model (the test accuracy
// of the last epoch, on how many images, the network's size and cost, and the wall time).
// `espalier compare` reads it instead of parsing the printed lines.

import Foundation

public struct TrainingOutcome: Codable, Equatable, Sendable {
    /// Test accuracy after the last epoch (a fraction), and on how many test images.
    public var testAccuracy: Double
    public var testImages: Int
    public var trainImages: Int
    public var epochs: Int
    public var seconds: Double
    public var parameters: Int
    /// Forward FLOPs of one image (a multiply-add counts 2).
    public var forwardFlops: Int

    public init(testAccuracy: Double, testImages: Int, trainImages: Int, epochs: Int, seconds: Double, parameters: Int, forwardFlops: Int) {
        self.testAccuracy = testAccuracy; self.testImages = testImages; self.trainImages = trainImages; self.epochs = epochs
        self.seconds = seconds; self.parameters = parameters; self.forwardFlops = forwardFlops
    }

    public static let name = "result.json"

    public func write(folder: String) throws {
        try AtomicFile.write(try SnakeCaseJSON.encode(self), to: (folder as NSString).appendingPathComponent(Self.name))
    }

    public static func load(folder: String) throws -> TrainingOutcome {
        let path = (folder as NSString).appendingPathComponent(name)
        do { return try SnakeCaseJSON.decode(TrainingOutcome.self, from: Data(contentsOf: URL(fileURLWithPath: path))) } catch {
            throw EspalierError.data(file: path, problem: "no readable training result (\(error))")
        }
    }
}
