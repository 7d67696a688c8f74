// Building fixture plugins with the system C compiler, and finding the plugins built with the tree.

import EspalierHost
import Foundation
import XCTest

struct BuildFailure: Error, CustomStringConvertible { let message: String; var description: String { message } }

enum PluginFixtures {
    /// The repository root (this file is Tests/EspalierHostTests/PluginTestSupport.swift).
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let sdkInclude = repoRoot.appendingPathComponent("SDK/include").path
    static let fixtureSource = repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/fixture.c").path

    /// A fresh empty directory.
    static func tempDir(_ name: String = "plugins") throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }

    /// Runs a command; returns (status, output).
    @discardableResult
    static func run(_ args: [String], cwd: String? = nil) throws -> (Int32, String) {
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
    static func build(_ file: String, in dir: String, defines: [String] = [], source: String = fixtureSource) throws -> String {
        let out = URL(fileURLWithPath: dir).appendingPathComponent(file).path
        let (status, log) = try run(["cc", "-std=c99", "-Wall", "-Werror", "-O1", "-shared", "-fPIC", "-I", sdkInclude]
                                    + defines.map { "-D" + $0 } + ["-o", out, source, "-lm"])
        guard status == 0 else { throw BuildFailure(message: "cc failed for \(file): \(log)") }
        return out
    }

    /// The folder the tree's plugins were built into: beside the test bundle, like beside `espalier`.
    static var builtPluginDir: String { PluginSearchPath.executableDirectory() ?? "." }
}
