plugins {
    alias(libs.plugins.android.application)
}

android {
    namespace = "dev.tflitepipeline.demo"
    compileSdk = libs.versions.compileSdk.get().toInt()

    defaultConfig {
        applicationId = "dev.tflitepipeline.demo"
        minSdk = libs.versions.minSdk.get().toInt()
        targetSdk = libs.versions.targetSdk.get().toInt()
        versionCode = 1
        versionName = "1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // .tflite assets stay uncompressed so the interpreter can memory-map them from the APK.
    androidResources {
        noCompress += listOf("tflite")
    }

    testOptions {
        unitTests.all {
            // The JVM unit tests read the pipeline's golden vectors and exported config from the source tree.
            it.systemProperty("golden.dir", file("src/androidTest/assets/golden").path)
            it.systemProperty("assets.dir", file("src/main/assets").path)
        }
    }
}

dependencies {
    implementation(libs.litert)
    implementation(libs.androidx.activity)

    testImplementation(libs.junit)
    testImplementation(libs.org.json) // android.jar's org.json is a stub in JVM unit tests

    androidTestImplementation(libs.androidx.test.ext.junit)
    androidTestImplementation(libs.androidx.test.runner)
}
