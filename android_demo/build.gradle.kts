// Top-level build file: plugin versions come from gradle/libs.versions.toml.
plugins {
    alias(libs.plugins.android.application) apply false
    // AGP 9 compiles Kotlin itself (built-in Kotlin); declaring KGP here pins the Kotlin version it uses.
    alias(libs.plugins.kotlin.android) apply false
}
