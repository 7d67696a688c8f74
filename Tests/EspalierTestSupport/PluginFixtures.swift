// Building fixture plugins (Tests/EspalierHostTests/Fixtures) with the system C compiler, and
// finding the plugins built with the tree.

import Foundation
import XCTest

public struct BuildFailure: Error, CustomStringConvertible { public let message: String; public var description: String { message } }

public enum PluginFixtures {
    /// The repository root (this file is Tests/EspalierTestSupport/PluginFixtures.swift).
    public static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    public static let sdkInclude = repoRoot.appendingPathComponent("SDK/include").path
    public static let fixtureSource = repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/fixture.c").path

    /// A fresh empty directory.
    public static func tempDir(_ name: String = "plugins") throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }

    /// Runs a command; returns (status, output).
    @discardableResult
    public static func run(_ args: [String], cwd: String? = nil) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Compiles `source` into `dir/file` as a shared library with the given -D flags.
    @discardableResult
    public static func build(_ file: String, in dir: String, defines: [String] = [], source: String = fixtureSource) throws -> String {
        let out = URL(fileURLWithPath: dir).appendingPathComponent(file).path
        let (status, log) = try run(["cc", "-std=c99", "-Wall", "-Werror", "-O1", "-shared", "-fPIC", "-I", sdkInclude]
                                    + defines.map { "-D" + $0 } + ["-o", out, source, "-lm"])
        guard status == 0 else { throw BuildFailure(message: "cc failed for \(file): \(log)") }
        return out
    }

    /// The folder the tree's plugins were built into: beside the test bundle, like beside `espalier`.
    public static var builtPluginDir: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")).map { URL(fileURLWithPath: $0).deletingLastPathComponent().path } ?? "."
    }
}
